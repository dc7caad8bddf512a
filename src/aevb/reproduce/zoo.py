"""``aevb reproduce zoo``: the most cited improvements on the 2013 VAE, each trained with its paper's recipe
and scored the same way, against the published test -log p(x).

    aevb reproduce zoo --out results/zoo                          # every row, full recipes (days of CPU)
    aevb reproduce zoo --rows vae-1l,vamp --budget 10 --out r     # two rows, at most 10 passes each

Each row is a run directory ``OUT/runs/ROW`` trained through ``aevb.train.Trainer`` (config.json, weights,
train_state, metrics.jsonl), so a row that is stopped continues where its last checkpoint left it when the
command is run again; a finished row is not trained again, and its score (``zoo_score.json``) is kept for the
same k and test images. Rows run one at a time. After each row ``zoo.csv`` and ``zoo.md`` are rewritten with
every row finished so far: our test -log p(x) (the k-sample importance-sampled estimate with the full q as
proposal, k = 5000 on all 10,000 test images by default), its standard error over images, the passes
trained, the wall time, and the published figure with its source and protocol.

Protocols: ``dynamic`` trains on MNIST binarized afresh at every batch and tests on the test set binarized
once with a fixed seed; ``static`` is Larochelle & Murray's binarized MNIST (``binarized_mnist``).

Recipes (``RECIPES``): the schedule, optimizer, batch size and KL warm-up of each paper, as far as our
trainer has them; what differs from the paper is said in the row's ``deviations``. ``--budget`` caps the
passes of a row (a stopped schedule is the start of the paper's, not a compressed copy of it).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .. import checkpoint as ckpt
from ..run import load as load_run
from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ..data import Dataset, load_dataset
from .common import eval_subset, write_csv
from .iwae_table import schedule_stages

# --- the recipes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How a paper trained: ``stages`` (passes, learning rate) in order, the minibatch, Adam's eps, a linear
    KL warm-up over ``warmup_passes`` passes (0: none), and whether a validation split is held out."""

    name: str
    stages: tuple[tuple[int, float], ...]
    batch_size: int
    adam_eps: float = 1e-8
    warmup_passes: int = 0
    valid_size: int | None = None  # None: the data set's own validation split; 0: train on all of it
    description: str = ""

    @property
    def passes(self) -> int:
        return sum(p for p, _ in self.stages)


def _iwae_stages() -> tuple[tuple[int, float], ...]:
    """3^i passes at 1e-3 * 10^(-i/7), i = 0..7 (3280 passes): ``iwae_table.schedule_stages`` per pass."""
    return tuple((samples, lr) for samples, lr in schedule_stages(1))


RECIPES = {
    "iwae": Recipe("iwae", _iwae_stages(), batch_size=20, adam_eps=1e-4, valid_size=0,
                   description="Burda et al. 2016: Adam (0.9, 0.999, eps 1e-4), M = 20, 3^i passes at "
                               "1e-3 * 10^(-i/7) for i = 0..7 (3280 passes), no validation split (60,000 MNIST "
                               "training images; binarized_mnist keeps its own 50,000 / 10,000)"),
    "tomczak": Recipe("tomczak", ((2000, 5e-4),), batch_size=100, warmup_passes=100,
                      description="Tomczak & Welling 2018: Adam 5e-4, M = 100, KL warm-up over 100 epochs, "
                                  "at most 2000 epochs, 50,000 training / 10,000 validation images"),
    "nf": Recipe("nf", ((1000, 1e-5),), batch_size=100, warmup_passes=20,
                 description="Rezende & Mohamed 2015 as we recall it (not checked against the paper here): "
                             "500,000 updates of M = 100 (1000 passes of 50,000), step size 1e-5, the KL annealed "
                             "in over 10,000 updates (20 passes)"),
}

# --- the rows ----------------------------------------------------------------------------------------

IWAE_1L = dict(hidden=(200, 200), activation="tanh", latent_dim=50)
IWAE_2L = dict(hidden=(200, 200), activation="tanh", latent_dim=100, stochastic_layers=2, top_latent_dim=50,
               top_hidden=(100, 100))  # yburda/iwae experiments.py: latent [100, 50], q [[200,200],[100,100]]
TOMCZAK = dict(hidden=(300, 300), activation="relu", latent_dim=40, log_var_min=-6.0, log_var_max=2.0)
NF = dict(hidden=(400,), activation="tanh", latent_dim=40)
DATA = {"dynamic": ("mnist", "dynamic"), "static": ("binarized_mnist", "none")}


@dataclass(frozen=True)
class Row:
    """One model of the zoo: its settings, recipe and protocol, and the published figure it is read against
    (test -log p(x) in nats, ``None`` where we have none we could check), with where it comes from."""

    name: str
    model: str
    protocol: str
    recipe: str
    settings: dict[str, Any]
    published: float | None
    source: str
    checked: str  # how the published figure was checked
    deviations: str = ""
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig settings beyond the recipe (objective, ...)


IWAE_SRC = "Burda et al. 2016 (ICLR), Table 1, MNIST"
UNCHECKED_IWAE = "as the issue quotes it; the paper's table was not readable here (architecture and schedule " \
                 "checked against the authors' code, yburda/iwae)"
PYTHAE = "pythae (Chadebec et al. 2022) reproduction, Hugging Face card clementchadebec/"

ROWS: tuple[Row, ...] = (
    Row("vae-1l", "VAE, 1 stochastic layer (784-200-200-50 tanh)", "dynamic", "iwae", IWAE_1L, 86.76,
        f"{IWAE_SRC}: VAE, k = 1", UNCHECKED_IWAE),
    Row("iwae-1l", "IWAE k = 50, 1 stochastic layer", "dynamic", "iwae", IWAE_1L, 84.78,
        f"{IWAE_SRC}: IWAE, k = 50", UNCHECKED_IWAE + "; pythae's card quotes 87.1 for this entry",
        train={"objective": "iwae", "iwae_k": 50}),
    Row("vae-2l", "VAE, 2 stochastic layers (200-200-100 / 100-100-50 tanh)", "dynamic", "iwae", IWAE_2L, 85.33,
        f"{IWAE_SRC}: VAE, 2 layers, k = 1", UNCHECKED_IWAE),
    Row("iwae-2l", "IWAE k = 50, 2 stochastic layers", "dynamic", "iwae", IWAE_2L, 82.90,
        f"{IWAE_SRC}: IWAE, 2 layers, k = 50", UNCHECKED_IWAE, train={"objective": "iwae", "iwae_k": 50}),
    Row("planar-10", "VAE + planar flow K = 10 (784-400-40 tanh)", "static", "nf",
        {**NF, "flow": "planar", "flow_steps": 10}, 87.5,
        "Rezende & Mohamed 2015 (ICML), Table 2: DLGM + NF (k = 10)",
        "as the issue quotes it; not read here (pythae's card confirms this table's diagonal-Gaussian DLGM at "
        "89.9 and reads the protocol as static binarization)",
        deviations="Adam where the paper (as we recall it) used RMSprop with momentum; tanh units (the paper's "
                   "were maxout, as we recall); the KL weight rises from 0; the flow's parameters amortised "
                   "through a context head as wide as z"),
    Row("planar-80", "VAE + planar flow K = 80 (784-400-40 tanh)", "static", "nf",
        {**NF, "flow": "planar", "flow_steps": 80}, 85.1,
        "Rezende & Mohamed 2015 (ICML), Table 2: DLGM + NF (k = 80)",
        "as the issue quotes it; not read here", deviations="as planar-10"),
    Row("iaf", "VAE + IAF, 4 steps (MLP variant: the 1-layer IWAE networks, MADE width 200)", "dynamic", "iwae",
        {**IWAE_1L, "flow": "iaf", "flow_steps": 4}, None,
        "Kingma et al. 2016 (NeurIPS), Table 2 reports convolutional ResNet VAEs only",
        "no MLP figure in the paper to compare with; its table was not readable here",
        deviations="an MLP encoder and decoder where the paper used ResNet blocks; the IWAE paper's schedule"),
    Row("mog", "VAE + mixture-of-Gaussians prior, K = 500 (784-300-300-40 relu)", "dynamic", "tomczak",
        {**TOMCZAK, "prior": "mog", "prior_components": 500}, 86.55,
        "Tomczak & Welling 2018 (AISTATS), Table 2: VAE (L = 1) + MoG", "as the issue quotes it; not read here",
        deviations="relu layers instead of gated dense layers; no early stopping (a fixed number of epochs)"),
    Row("vamp", "VAE + VampPrior, K = 500 (784-300-300-40 relu)", "dynamic", "tomczak",
        {**TOMCZAK, "prior": "vamp", "prior_components": 500}, 85.57,
        "Tomczak & Welling 2018 (AISTATS): VAE (L = 1) + VampPrior",
        "pythae's card clementchadebec/reproduced_vamp quotes 85.57 as the paper's figure", deviations="as mog"),
    Row("vamp-2l", "2-layer VAE + VampPrior on z2, K = 500 (300-300 relu, z1 = z2 = 40)", "dynamic", "tomczak",
        {**TOMCZAK, "prior": "vamp", "prior_components": 500, "stochastic_layers": 2, "top_latent_dim": 40,
         "top_hidden": (300, 300)}, 83.19,
        "Tomczak & Welling 2018 (AISTATS), Table 2: HVAE (L = 2) + VampPrior", "as the issue quotes it; not read here",
        deviations="as mog; our two layers are the IWAE stack q(z1|x) q(z2|z1), p(z1|z2) p(x|z1), where the "
                   "paper's HVAE has q(z2|x) q(z1|x, z2) and p(x|z1, z2)"),
    Row("vae-static", "VAE, 1 stochastic layer (784-200-200-50 tanh)", "static", "iwae", IWAE_1L, 89.78,
        f"{PYTHAE}reproduced_vae (NLL with 200 importance samples)", "read from the card",
        deviations="pythae's own recipe differs (it follows Rezende & Mohamed's VAE); ours is the IWAE paper's"),
    Row("iwae-static", "IWAE k = 50, 1 stochastic layer", "static", "iwae", IWAE_1L, 86.82,
        f"{PYTHAE}reproduced_iwae (n_samples = 50, NLL with 5000 importance samples)", "read from the card",
        train={"objective": "iwae", "iwae_k": 50}),
    Row("vamp-static", "VAE + VampPrior, K = 500", "static", "tomczak",
        {**TOMCZAK, "prior": "vamp", "prior_components": 500}, 85.79,
        f"{PYTHAE}reproduced_vamp (K = 500, NLL with 5000 importance samples)", "read from the card",
        deviations="as mog"),
)
ROW_NAMES = tuple(r.name for r in ROWS)


def get_row(name: str) -> Row:
    for row in ROWS:
        if row.name == name:
            return row
    raise ValueError(f"unknown zoo row {name!r}; choose from {', '.join(ROW_NAMES)}")


# --- one row -----------------------------------------------------------------------------------------

SCORE = "zoo_score.json"
WALL = "zoo_wall.json"  # wall seconds spent training the row, over every session
CPU = "zoo_cpu.json"  # process CPU seconds spent training the row, over every session
CURVE = "curve.jsonl"  # one line per curve point: test -log p(x) against training CPU time
CURVE_EVERY = 360.0  # CPU seconds of training between curve points (6 CPU-minutes)
CURVE_K, CURVE_N = 100, 1000  # the curve's estimate: k importance samples on a fixed subset of test images


def row_config(row: Row, n_train: int, seed: int = 0, device: str = "auto", data_dir: str | None = None,
               subset: int | None = None) -> RunConfig:
    """The run configuration of ``row`` (the first stage's learning rate), for ``n_train`` training images."""
    recipe = RECIPES[row.recipe]
    dataset, binarize = DATA[row.protocol]
    steps_per_pass = max(1, n_train // recipe.batch_size)
    train: dict[str, Any] = dict(epochs=recipe.stages[0][0], batch_size=recipe.batch_size, optimizer="adam",
                                 lr=recipe.stages[0][1], seed=seed, device=device, **row.train)
    if recipe.warmup_passes:
        train.update(kl_schedule="linear", warmup_steps=recipe.warmup_passes * steps_per_pass)
    return RunConfig(model=ModelConfig(input_shape=(1, 28, 28), likelihood="bernoulli", **row.settings),
                     data=DataConfig(dataset=dataset, data_dir=data_dir, binarize=binarize,
                                     valid_size=recipe.valid_size, subset=subset),
                     train=TrainConfig(**train))


def stages_within(recipe: Recipe, budget: int | None) -> list[tuple[int, float]]:
    """(cumulative passes at the end of the stage, learning rate) of the stages that fit in ``budget``
    passes (the last one cut short), all of them for ``budget=None``."""
    out, end = [], 0
    for passes, lr in recipe.stages:
        stop = end + passes if budget is None else min(end + passes, budget)
        if stop <= end:
            break
        out.append((stop, lr))
        end = stop
    return out


def _set_optimizer(trainer, lr: float, eps: float) -> None:
    for group in trainer.optimizer.param_groups:
        group["lr"], group["eps"] = lr, eps


def train_row(row: Row, run_dir: Path, data: Dataset, budget: int | None = None, seed: int = 0,
              device: str = "auto", data_dir: str | None = None, subset: int | None = None, progress: bool = False,
              log: Callable[[str], None] = print, cpu_hours: float | None = None,
              curve: Callable[[Any, float], None] | None = None, curve_every: float = CURVE_EVERY) -> int:
    """Train ``row`` in ``run_dir`` stage by stage, continuing from its last checkpoint; return the passes done.

    ``cpu_hours``: stop (at a checkpoint, resumable) once the row's training has used this much process CPU
    time over all its sessions (``train_cpu``). ``curve(trainer, cpu_seconds)`` is called whenever training
    crosses a multiple of ``curve_every`` CPU seconds, and where it stops, with training paused there; the
    CPU time it takes is not the row's."""
    from ..runconfig import completed_epochs
    from ..train import Trainer

    recipe = RECIPES[row.recipe]
    base = row_config(row, len(data.train), seed, device, data_dir, subset)
    limit = None if cpu_hours is None else cpu_hours * 3600.0
    for end, lr in stages_within(recipe, budget):
        while (completed_epochs(run_dir) or 0) < end:
            done, spent = completed_epochs(run_dir) or 0, train_cpu(run_dir)
            if limit is not None and spent >= limit:
                return done
            target = _next_stop(spent, limit, curve_every if curve is not None else None)
            start = time.perf_counter()
            config = replace(base, train=replace(base.train, epochs=end, lr=lr))
            trainer = Trainer(config, run_dir, dataset=data, progress=progress)
            if (run_dir / ckpt.TRAIN_STATE).exists():
                trainer.restore()
            _set_optimizer(trainer, lr, recipe.adam_eps)  # the stage's (a restored optimizer has the last one's)
            log(f"zoo {row.name}: passes {done} -> {end} at lr {lr:.3g}"
                + ("" if target is None else f", until {target / 3600:.3f} CPU-hours"))
            cpu_start = time.process_time()  # from here: building the trainer (imports, files) is not training

            def out_of_time() -> bool:
                return spent + time.process_time() - cpu_start >= target

            try:
                trainer.run(stop_when=None if target is None else out_of_time)
            finally:  # an interrupted session's time counts too
                _add_cpu(run_dir, time.process_time() - cpu_start)
                _add_wall(run_dir, time.perf_counter() - start)
            stopped = trainer.epoch < end  # paused by the budget, not at the stage's end
            if stopped and limit is not None and train_cpu(run_dir) >= limit:
                ckpt.save_model(run_dir, trainer.model, trainer.config)  # the weights it stopped with
            finished = not stopped and _last_stage(recipe, budget, end)
            if curve is not None and (stopped or finished):
                curve(trainer, train_cpu(run_dir))
    return completed_epochs(run_dir) or 0


def _next_stop(spent: float, limit: float | None, every: float | None) -> float | None:
    """The CPU seconds at which the next training segment stops: the next multiple of ``every`` after
    ``spent``, or ``limit`` if that comes first (None: neither, train to the stage's end)."""
    marks = [m for m in (limit, None if every is None else (math.floor(spent / every) + 1) * every) if m is not None]
    return min(marks) if marks else None


def _last_stage(recipe: Recipe, budget: int | None, end: int) -> bool:
    return end == stages_within(recipe, budget)[-1][0]


def _add_cpu(run_dir: Path, seconds: float) -> None:
    if not run_dir.is_dir():
        return
    total = round(train_cpu(run_dir) + seconds, 3)
    ckpt.atomic_write(run_dir / CPU, json.dumps({"train_cpu_seconds": total}).encode())


def train_cpu(run_dir: Path) -> float:
    """Process CPU seconds (every thread; ``time.process_time``) spent training the row so far, over every
    session: ``Trainer.run``, its steps, checkpoints and the recipe's per-epoch validation; not building the
    trainer, the curve or the score."""
    path = run_dir / CPU
    return float(json.loads(path.read_text())["train_cpu_seconds"]) if path.exists() else 0.0


def _add_wall(run_dir: Path, seconds: float) -> None:
    if not run_dir.is_dir():
        return
    total = round(train_wall(run_dir) + seconds, 3)
    ckpt.atomic_write(run_dir / WALL, json.dumps({"train_wall_seconds": total}).encode())


def train_wall(run_dir: Path) -> float:
    """Wall seconds spent training the row so far (0 before its first session)."""
    path = run_dir / WALL
    return float(json.loads(path.read_text())["train_wall_seconds"]) if path.exists() else 0.0


def trained_steps(run_dir: Path) -> int:
    """Optimizer steps the row's training state has taken (0 without one)."""
    try:
        return int(ckpt.load_train_state(run_dir)[1].get("global_step", 0))
    except ckpt.CheckpointError:
        return 0


def score_row(row: Row, run_dir: Path, x_test: torch.Tensor, k: int, seed: int = 0, device: str = "cpu",
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Test log p(x) of the trained row (k importance samples from the model's full q), with the test ELBO,
    its KL, the active units and the KL per latent dimension; cached in ``run_dir/zoo_score.json`` for the
    same k, test images, passes and steps."""
    from ..evaluate import _mean_and_stderr, evaluate_elbo, latent_statistics, log_likelihood

    passes = int(ckpt.read_metrics(run_dir)[-1]["epoch"]) if ckpt.read_metrics(run_dir) else 0
    steps = trained_steps(run_dir)
    path = run_dir / SCORE
    if path.exists():
        saved = json.loads(path.read_text())
        if (saved.get("k"), saved.get("n_test"), saved.get("passes"), saved.get("steps", steps)) == \
                (k, len(x_test), passes, steps):
            return saved
    run = load_run(run_dir, device=device)
    start, cpu_start = time.perf_counter(), time.process_time()
    x = x_test.to(run.model.device)
    ll = log_likelihood(run.model, x, k=k, batch_size=100, chunk=min(k, 1000), seed=seed)
    mean, se = _mean_and_stderr(ll)
    bound = evaluate_elbo(run.model, x, seed=seed)
    stats = latent_statistics(run.model, x)
    score = {"k": k, "n_test": len(x_test), "passes": passes, "steps": steps, "test_nll": -mean, "stderr": se,
             "test_elbo": bound.get("elbo"), "test_kl": bound.get("kl"), "active_units": stats["active_units"],
             "latent_dim": run.model.config.latent_dim, "kl_per_dim": stats["kl_per_dim"],
             "active_unit_variances": stats["active_unit_variances"],
             "train_cpu_seconds": round(train_cpu(run_dir), 3),
             "eval_seconds": round(time.perf_counter() - start, 3),
             "eval_cpu_seconds": round(time.process_time() - cpu_start, 3)}
    ckpt.atomic_write(path, json.dumps(score, indent=2).encode())
    log(f"zoo {row.name}: test -log p(x) {-mean:.2f} +- {se:.2f} (k = {k}, {len(x_test)} images, {passes} passes); "
        f"{stats['active_units']} of {run.model.config.latent_dim} units active")
    return score


# --- the curve ---------------------------------------------------------------------------------------

def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The row's curve points (``curve.jsonl``), in the order recorded ([] before the first)."""
    path = run_dir / CURVE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_curve(run_dir: Path, model, x: torch.Tensor, cpu_seconds: float, step: int, steps_per_pass: int,
                 k: int = CURVE_K, seed: int = 0) -> dict[str, Any] | None:
    """Append one curve point to ``run_dir/curve.jsonl`` (the file rewritten atomically): the cheap test
    -log p(x) estimate of ``model`` (``k`` importance samples on the images ``x``) with its standard error
    over images, after ``cpu_seconds`` of training and ``step`` steps. None (nothing written) when the
    curve has that step already (a resumed session)."""
    from ..evaluate import _mean_and_stderr, log_likelihood

    points = read_curve(run_dir)
    if any(p["step"] == step for p in points):
        return None
    start, cpu_start = time.perf_counter(), time.process_time()
    model.eval()
    ll = log_likelihood(model, x.to(model.device), k=k, batch_size=100, seed=seed)
    mean, se = _mean_and_stderr(ll)
    point = {"train_cpu_seconds": round(cpu_seconds, 3), "cpu_hours": round(cpu_seconds / 3600, 5), "step": step,
             "passes": round(step / steps_per_pass, 4), "test_nll": round(-mean, 4), "stderr": round(se, 4),
             "k": k, "n_test": len(x), "train_wall_seconds": round(train_wall(run_dir), 3),
             "eval_cpu_seconds": round(time.process_time() - cpu_start, 3),
             "eval_wall_seconds": round(time.perf_counter() - start, 3)}
    text = "".join(json.dumps(p) + "\n" for p in [*points, point])
    ckpt.atomic_write(run_dir / CURVE, text.encode())
    return point


def result_line(row: Row, run_dir: Path, score: dict[str, Any]) -> dict[str, Any]:
    """The CSV row: ours beside the published figure."""
    metrics = ckpt.read_metrics(run_dir)
    step_seconds = round(sum(m.get("seconds", 0.0) for m in metrics), 3)
    recipe = RECIPES[row.recipe]
    return {"row": row.name, "model": row.model, "dataset": DATA[row.protocol][0], "protocol": row.protocol,
            "test_nll": round(score["test_nll"], 3), "stderr": round(score["stderr"], 3), "k": score["k"],
            "n_test": score["n_test"], "passes": score["passes"], "recipe_passes": recipe.passes,
            "steps": score.get("steps", ""), "train_cpu_hours": round(score.get("train_cpu_seconds", 0) / 3600, 4),
            "train_step_seconds": step_seconds, "train_wall_seconds": round(train_wall(run_dir), 3),
            "eval_seconds": score["eval_seconds"],
            "wall_seconds": round(train_wall(run_dir) + score["eval_seconds"], 3),
            "test_elbo": _rounded(score.get("test_elbo")), "test_kl": _rounded(score.get("test_kl")),
            "active_units": score.get("active_units", ""), "latent_dim": score.get("latent_dim", ""),
            "published": row.published, "source": row.source, "checked": row.checked,
            "recipe": recipe.description, "deviations": row.deviations}


def _rounded(value: float | None) -> float | str:
    return "" if value is None else round(value, 3)


def collect_lines(out: Path) -> list[dict[str, Any]]:
    """The CSV rows of every row scored under ``out`` (its run directories' ``zoo_score.json``), in the
    zoo's order: several processes training different rows into one ``out`` all write the whole table."""
    lines = []
    for row in ROWS:
        run_dir = out / "runs" / row.name
        if (run_dir / SCORE).exists():
            lines.append(result_line(row, run_dir, json.loads((run_dir / SCORE).read_text())))
    return lines


# --- the table ---------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def markdown(lines: list[dict[str, Any]]) -> str:
    """The results as a markdown table (our -log p(x) +- its standard error, k, images)."""
    head = ("| row | model | protocol | ours: test -log p(x) (k, images) | published | source | passes | "
            "training CPU-hours | wall time | active units |")
    out = [head, "|" + "---|" * 10]
    for r in lines:
        ours = f"{r['test_nll']:.2f} ± {r['stderr']:.2f} (k = {r['k']}, {r['n_test']})"
        published = "—" if r["published"] in (None, "") else f"{float(r['published']):.2f}"
        passes = f"{r['passes']} of {r['recipe_passes']}"
        units = "—" if r.get("active_units", "") == "" else f"{r['active_units']} of {r['latent_dim']}"
        out.append(f"| {r['row']} | {r['model']} | {r['protocol']} | {ours} | {published} | {r['source']} | "
                   f"{passes} | {float(r.get('train_cpu_hours') or 0):.2f} | {_duration(r['wall_seconds'])} | "
                   f"{units} |")
    return "\n".join(out) + "\n"


def run(out: str | Path, rows: tuple[str, ...] | None = None, budget: int | None = None, k: int = 5000,
        n_test: int | None = None, subset: int | None = None, seed: int = 0, device: str = "auto",
        data_dir: str | None = None, progress: bool = False, log: Callable[[str], None] = print,
        cpu_hours: float | None = None, curve_minutes: float | None = None, curve_k: int = CURVE_K,
        curve_n: int = CURVE_N) -> dict[str, Path]:
    """Train and score ``rows`` (all by default) one at a time; write ``zoo.csv`` and ``zoo.md`` under ``out``
    after each, with every row scored there so far (also by other processes). ``budget``: at most this many
    passes per row; ``cpu_hours``: at most this much training CPU time per row (``train_row``);
    ``subset``: train on the first N images; ``n_test``: score a fixed random subset of the test images.
    ``curve_minutes``: every so many training CPU-minutes (default 6 with ``cpu_hours``, else 0: no curve)
    record the test -log p(x) at k = ``curve_k`` on ``curve_n`` fixed test images in the row's curve.jsonl."""
    from ..devices import resolve_device

    out = Path(out)
    selected = [get_row(name) for name in (rows or ROW_NAMES)]
    eval_device = str(resolve_device(device))
    csv_path, md_path = out / "zoo.csv", out / "zoo.md"
    datasets: dict[tuple[str, int | None], Dataset] = {}
    minutes = curve_minutes if curve_minutes is not None else (CURVE_EVERY / 60 if cpu_hours else 0.0)
    for row in selected:
        recipe = RECIPES[row.recipe]
        key = (row.protocol, recipe.valid_size)
        if key not in datasets:
            name, binarize = DATA[row.protocol]
            datasets[key] = load_dataset(DataConfig(dataset=name, data_dir=data_dir, binarize=binarize,
                                                    valid_size=recipe.valid_size, subset=subset))
        data = datasets[key]
        run_dir = out / "runs" / row.name
        curve = None
        if minutes > 0:
            x_curve = eval_subset(data.test.x, curve_n, seed)

            def curve(trainer, cpu_seconds: float, run_dir: Path = run_dir, x_curve: torch.Tensor = x_curve,
                      name: str = row.name) -> None:
                point = record_curve(run_dir, trainer.model, x_curve, cpu_seconds, trainer.global_step,
                                     trainer.steps_per_epoch, curve_k, seed)
                if point is not None:
                    log(f"zoo {name}: {point['cpu_hours']:.2f} CPU-hours, {point['passes']:.1f} passes: test "
                        f"-log p(x) {point['test_nll']:.2f} +- {point['stderr']:.2f} (k = {curve_k}, "
                        f"{len(x_curve)} images)")

        train_row(row, run_dir, data, budget, seed, device, data_dir, subset, progress, log, cpu_hours=cpu_hours,
                  curve=curve, curve_every=minutes * 60 if minutes > 0 else CURVE_EVERY)
        x_test = eval_subset(data.test.x, n_test, seed)
        score_row(row, run_dir, x_test, k, seed, eval_device, log)
        lines = collect_lines(out)
        write_csv(csv_path, lines)
        ckpt.atomic_write(md_path, markdown(lines).encode())
    return {"csv": csv_path, "md": md_path}
