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
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .. import checkpoint as ckpt
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
              log: Callable[[str], None] = print) -> int:
    """Train ``row`` in ``run_dir`` stage by stage, continuing from its last checkpoint; return the passes done."""
    from ..runconfig import completed_epochs
    from ..train import Trainer

    recipe = RECIPES[row.recipe]
    base = row_config(row, len(data.train), seed, device, data_dir, subset)
    for end, lr in stages_within(recipe, budget):
        done = completed_epochs(run_dir) or 0
        if done >= end:
            continue
        start = time.perf_counter()
        try:
            config = replace(base, train=replace(base.train, epochs=end, lr=lr))
            trainer = Trainer(config, run_dir, dataset=data, progress=progress)
            if (run_dir / ckpt.TRAIN_STATE).exists():
                trainer.restore()
            _set_optimizer(trainer, lr, recipe.adam_eps)  # the stage's (a restored optimizer has the last one's)
            log(f"zoo {row.name}: passes {done} -> {end} at lr {lr:.3g}")
            trainer.run()
        finally:  # an interrupted session's time counts too
            _add_wall(run_dir, time.perf_counter() - start)
    return completed_epochs(run_dir) or 0


def _add_wall(run_dir: Path, seconds: float) -> None:
    if not run_dir.is_dir():
        return
    total = round(train_wall(run_dir) + seconds, 3)
    ckpt.atomic_write(run_dir / WALL, json.dumps({"train_wall_seconds": total}).encode())


def train_wall(run_dir: Path) -> float:
    """Wall seconds spent training the row so far (0 before its first session)."""
    path = run_dir / WALL
    return float(json.loads(path.read_text())["train_wall_seconds"]) if path.exists() else 0.0


def score_row(row: Row, run_dir: Path, x_test: torch.Tensor, k: int, seed: int = 0, device: str = "cpu",
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Test log p(x) of the trained row (k importance samples from the model's full q); cached in
    ``run_dir/zoo_score.json`` for the same k, test images and passes."""
    from ..evaluate import _mean_and_stderr, log_likelihood

    passes = int(ckpt.read_metrics(run_dir)[-1]["epoch"]) if ckpt.read_metrics(run_dir) else 0
    path = run_dir / SCORE
    if path.exists():
        saved = json.loads(path.read_text())
        if (saved.get("k"), saved.get("n_test"), saved.get("passes")) == (k, len(x_test), passes):
            return saved
    run = ckpt.load(run_dir, device=device)
    start = time.perf_counter()
    ll = log_likelihood(run.model, x_test.to(run.model.device), k=k, batch_size=100, chunk=min(k, 1000), seed=seed)
    mean, se = _mean_and_stderr(ll)
    score = {"k": k, "n_test": len(x_test), "passes": passes, "test_nll": -mean, "stderr": se,
             "eval_seconds": round(time.perf_counter() - start, 3)}
    ckpt.atomic_write(path, json.dumps(score, indent=2).encode())
    log(f"zoo {row.name}: test -log p(x) {-mean:.2f} +- {se:.2f} (k = {k}, {len(x_test)} images, {passes} passes)")
    return score


def result_line(row: Row, run_dir: Path, score: dict[str, Any]) -> dict[str, Any]:
    """The CSV row: ours beside the published figure."""
    metrics = ckpt.read_metrics(run_dir)
    step_seconds = round(sum(m.get("seconds", 0.0) for m in metrics), 3)
    recipe = RECIPES[row.recipe]
    return {"row": row.name, "model": row.model, "dataset": DATA[row.protocol][0], "protocol": row.protocol,
            "test_nll": round(score["test_nll"], 3), "stderr": round(score["stderr"], 3), "k": score["k"],
            "n_test": score["n_test"], "passes": score["passes"], "recipe_passes": recipe.passes,
            "train_step_seconds": step_seconds, "train_wall_seconds": round(train_wall(run_dir), 3),
            "eval_seconds": score["eval_seconds"],
            "wall_seconds": round(train_wall(run_dir) + score["eval_seconds"], 3),
            "published": row.published, "source": row.source, "checked": row.checked,
            "recipe": recipe.description, "deviations": row.deviations}


# --- the table ---------------------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def markdown(lines: list[dict[str, Any]]) -> str:
    """The results as a markdown table (our -log p(x) +- its standard error, k, images)."""
    head = "| row | model | protocol | ours: test -log p(x) (k, images) | published | source | passes | wall time |"
    out = [head, "|" + "---|" * 8]
    for r in lines:
        ours = f"{r['test_nll']:.2f} ± {r['stderr']:.2f} (k = {r['k']}, {r['n_test']})"
        published = "—" if r["published"] in (None, "") else f"{float(r['published']):.2f}"
        passes = f"{r['passes']} of {r['recipe_passes']}"
        out.append(f"| {r['row']} | {r['model']} | {r['protocol']} | {ours} | {published} | {r['source']} | "
                   f"{passes} | {_duration(r['wall_seconds'])} |")
    return "\n".join(out) + "\n"


def run(out: str | Path, rows: tuple[str, ...] | None = None, budget: int | None = None, k: int = 5000,
        n_test: int | None = None, subset: int | None = None, seed: int = 0, device: str = "auto",
        data_dir: str | None = None, progress: bool = False, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Train and score ``rows`` (all by default) one at a time; write ``zoo.csv`` and ``zoo.md`` under ``out``
    after each. ``budget``: at most this many passes per row; ``subset``: train on the first N images;
    ``n_test``: score a fixed random subset of the test images."""
    from ..devices import resolve_device

    out = Path(out)
    selected = [get_row(name) for name in (rows or ROW_NAMES)]
    eval_device = str(resolve_device(device))
    lines: list[dict[str, Any]] = []
    csv_path, md_path = out / "zoo.csv", out / "zoo.md"
    datasets: dict[tuple[str, int | None], Dataset] = {}
    for row in selected:
        recipe = RECIPES[row.recipe]
        key = (row.protocol, recipe.valid_size)
        if key not in datasets:
            name, binarize = DATA[row.protocol]
            datasets[key] = load_dataset(DataConfig(dataset=name, data_dir=data_dir, binarize=binarize,
                                                    valid_size=recipe.valid_size, subset=subset))
        data = datasets[key]
        run_dir = out / "runs" / row.name
        train_row(row, run_dir, data, budget, seed, device, data_dir, subset, progress, log)
        x_test = eval_subset(data.test.x, n_test, seed)
        score = score_row(row, run_dir, x_test, k, seed, eval_device, log)
        lines.append(result_line(row, run_dir, score))
        write_csv(csv_path, lines)
        ckpt.atomic_write(md_path, markdown(lines).encode())
    return {"csv": csv_path, "md": md_path}
