"""The hierarchical VAE's likelihood runs: train a recipe, record test log p(x) against training CPU time, then
score the test set with k >= 1000 importance samples; every part resumable.

    aevb reproduce hvae --recipe mnist --steps 300000 --out results/hvae        # results/hvae/mnist/...
    aevb reproduce hvae --recipe fashion_mnist --steps 100000 --out results/hvae
    aevb reproduce hvae --recipe fashion_mnist_mixture --steps 100000 --out results/hvae   # 5 logistics per pixel

Under OUT/RECIPE: ``run/`` (the run directory, checkpointed), ``curve.jsonl`` (one line per point: training
steps, training CPU seconds of this process's threads, test log p(x) with ``curve_k`` samples on a fixed
random subset of ``curve_images`` test images, with its standard error), ``progress.json`` (training CPU seconds at the last checkpoint), ``final.jsonl`` (per-chunk
log p(x) of the final evaluation, so that it resumes where it stopped), ``final.json`` and ``table.md``
(against the published numbers). Run the same command again to continue: training resumes from its last
checkpoint, the curve and the final evaluation from their files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write

# Each recipe: the settings ``aevb train`` takes, and the protocol of its curve.
RECIPES: dict[str, dict[str, Any]] = {
    # Dynamically binarized MNIST, an MLP ladder (LVAE's scale: 4 layers, 512-wide state).
    "mnist": {"dataset": "mnist", "binarize": "dynamic", "model": "hvae", "architecture": "mlp", "hidden": (512,),
              "activation": "relu", "latent_layers": 4, "latent_sizes": (32, 32, 16, 16), "batch_size": 100,
              "lr": 1e-3, "optimizer": "adam", "lr_schedule": "warmup", "lr_warmup_steps": 1000, "kl_schedule": "linear",
              "warmup_steps": 10000, "ema_decay": 0.999, "skip_grad_norm": 5000.0, "clip_grad_norm": 200.0,
              "eval_batch_size": 1000},
    # Fashion-MNIST as 8-bit grey levels, the convolutional hierarchy with the discretized logistic.
    "fashion_mnist": {"dataset": "fashion_mnist", "model": "hvae", "architecture": "conv",
                      "likelihood": "discretized_logistic", "conv_channels": (32, 64), "activation": "relu",
                      "latent_layers": 4, "latent_sizes": (8, 8, 4, 4), "batch_size": 64, "lr": 1e-3,
                      "optimizer": "adam", "lr_schedule": "warmup", "lr_warmup_steps": 1000, "kl_schedule": "linear",
                      "warmup_steps": 5000, "ema_decay": 0.999, "skip_grad_norm": 1e6, "clip_grad_norm": 1e5,
                      "eval_batch_size": 500},
}
# The same hierarchy with a mixture of 5 discretized logistics per pixel (PixelCNN++/NVAE) as its likelihood.
RECIPES["fashion_mnist_mixture"] = {**RECIPES["fashion_mnist"], "likelihood": "discretized_logistic_mixture",
                                    "mixture_components": 5}

# Published test -log p(x) on dynamically binarized MNIST (nats) and bits/dim elsewhere, for the table.
PUBLISHED = {
    "mnist": [("IWAE, 2 layers, k=50 (Burda et al. 2016)", 82.90), ("LVAE, MLP ladder (Sonderby et al. 2016)", 81.74),
              ("Efficient-VDVAE (Hazami et al. 2022)", 79.09), ("NVAE (Vahdat & Kautz 2020)", 78.01)],
    "fashion_mnist": [("aevb single-layer conv VAE, k=1000 on the first 200 test images", 3.61),
                      ("aevb single-layer conv VAE, k=20 on all 10,000 test images", 3.69)],
}
PUBLISHED["fashion_mnist_mixture"] = PUBLISHED["fashion_mnist"]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines() if s.strip()] if path.exists() else []


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(line) + "\n" for line in lines).encode())


def _trainer(run_dir: Path, recipe: str, steps: int, seed: int, data_dir: str | None, device: str):
    """The run's trainer: resumed from ``run_dir`` when it holds a run, else started with the recipe; its
    epochs cover ``steps`` optimizer steps."""
    from ..runconfig import is_run, plan_run
    from ..train import Trainer

    settings = dict(RECIPES[recipe])
    if is_run(run_dir):
        plan = plan_run(resume=run_dir, overrides={"data_dir": data_dir} if data_dir else {})
    else:
        settings.update(seed=seed, device=device, checkpoint_every=1000, **({"data_dir": data_dir} if data_dir else {}))
        plan = plan_run(out=run_dir, overrides=settings)
    from ..data import load_dataset

    data = plan.data if plan.data is not None else load_dataset(plan.config.data)
    per_epoch = len(data.train) // plan.config.train.batch_size
    epochs = max(plan.config.train.epochs, math.ceil(steps / per_epoch))
    from dataclasses import replace

    plan.config = replace(plan.config, train=replace(plan.config.train, epochs=epochs))
    trainer = Trainer(plan.config, run_dir, dataset=data, progress=False)
    if plan.resume:
        trainer.restore()
    return trainer, data


def _train_cpu(root: Path, curve: list[dict], step: int) -> float:
    """The training CPU seconds spent up to ``step`` (the restored checkpoint's): progress.json's, written
    after every segment (each ends in a checkpoint); a run stopped after a later, mid-segment checkpoint adds
    the steps since at the average CPU per step so far."""
    path = root / "progress.json"
    known = json.loads(path.read_text()) if path.exists() else (
        {"step": curve[-1]["step"], "train_cpu_seconds": curve[-1]["train_cpu_seconds"]} if curve else None)
    if not known or known["step"] > step:
        return 0.0 if not known else known["train_cpu_seconds"] * step / known["step"]
    extra = step - known["step"]
    rate = known["train_cpu_seconds"] / known["step"] if known["step"] else 0.0
    return known["train_cpu_seconds"] + extra * rate


@torch.no_grad()
def _score(model, x: torch.Tensor, k: int, seed: int) -> tuple[float, float]:
    from ..evaluate import _mean_and_stderr, log_likelihood

    model.eval()
    try:
        return _mean_and_stderr(log_likelihood(model, x, k=k, batch_size=100, seed=seed))
    finally:
        model.train()


def run(out: str | Path, recipe: str = "mnist", steps: int = 300000, curve_every_cpu_s: float = 900.0,
        curve_images: int = 1000, curve_k: int = 100, final_k: int = 1000, final_images: int | None = None,
        final_chunk: int = 500, seed: int = 0, data_dir: str | None = None, device: str = "cpu",
        segment_steps: int = 500, log=print) -> dict[str, Any]:
    """Train (or continue) the recipe to ``steps``, a curve point every ``curve_every_cpu_s`` CPU seconds of
    training, then the final evaluation (``final_k`` samples on ``final_images`` test images, all by default).
    Returns the final record (also in OUT/RECIPE/final.json)."""
    from ..reproduce.common import eval_subset

    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}; got {recipe!r}")
    root = Path(out) / recipe
    root.mkdir(parents=True, exist_ok=True)
    trainer, data = _trainer(root / "run", recipe, steps, seed, data_dir, device)
    test = data.test.x
    curve_x = eval_subset(test, curve_images, seed=seed).to(trainer.device)
    curve = _read_jsonl(root / "curve.jsonl")
    curve = [p for p in curve if p["step"] <= trainer.global_step]  # points after the last checkpoint are redone
    cpu = _train_cpu(root, curve, trainer.global_step)
    since = 0.0
    if not curve:
        ll, se = _score(trainer.model, curve_x, curve_k, seed)
        curve.append({"step": trainer.global_step, "train_cpu_seconds": 0.0, "log_px": ll, "stderr": se,
                      "k": curve_k, "images": len(curve_x)})
        _write_jsonl(root / "curve.jsonl", curve)
    while trainer.global_step < steps:
        start = time.process_time()
        trainer.run(stop_after_steps=min(steps, trainer.global_step + segment_steps))
        spent = time.process_time() - start
        cpu += spent
        since += spent
        atomic_write(root / "progress.json", json.dumps({"step": trainer.global_step,
                                                          "train_cpu_seconds": round(cpu, 2)}).encode())
        if since >= curve_every_cpu_s or trainer.global_step >= steps:
            since = 0.0
            ll, se = _score(trainer.model, curve_x, curve_k, seed)
            curve.append({"step": trainer.global_step, "train_cpu_seconds": round(cpu, 1), "log_px": ll, "stderr": se,
                          "k": curve_k, "images": len(curve_x)})
            _write_jsonl(root / "curve.jsonl", curve)
            log(f"step {trainer.global_step}, {cpu / 3600:.3f} CPU-h: test log p(x) {ll:.2f} +- {se:.2f} "
                f"(k={curve_k}, {len(curve_x)} images)")
    return final_evaluation(root, trainer.model, test, final_k, final_images, final_chunk, seed, recipe, curve, log,
                            step=trainer.global_step)


def final_evaluation(root: Path, model, test: torch.Tensor, k: int, images: int | None, chunk: int, seed: int,
                     recipe: str, curve: list[dict], log=print, step: int | None = None) -> dict[str, Any]:
    """log p(x) with k samples on the first ``images`` test images (all by default), ``chunk`` images at a
    time, each chunk's per-image values appended to final.jsonl (so a stopped evaluation resumes; chunks of
    another k or of the weights at another training step are not reused)."""
    from ..evaluate import bits_per_dim, log_likelihood

    x = test if images is None else test[:images]
    done = _read_jsonl(root / "final.jsonl")
    done = [c for c in done if c["k"] == k and c.get("step") == step]
    values: list[float] = [v for c in done for v in c["log_px"]]
    model.eval()
    while len(values) < len(x):
        part = x[len(values) : len(values) + chunk].to(model.device)
        ll = log_likelihood(model, part, k=k, batch_size=50, seed=seed + len(values)).tolist()
        done.append({"first": len(values), "k": k, "step": step, "log_px": ll})
        values += ll
        _write_jsonl(root / "final.jsonl", done)
        log(f"final: {len(values)}/{len(x)} images scored with k={k}")
    v = torch.tensor(values, dtype=torch.float64)
    mean, se = v.mean().item(), (v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan"))
    record = {"recipe": recipe, "k": k, "images": len(v), "log_px": mean, "stderr": se,
              "bits_per_dim": bits_per_dim(mean, model.config.data_dim),
              "train_steps": step, "train_cpu_hours": _train_cpu(root, curve, step or 0) / 3600}
    atomic_write(root / "final.json", json.dumps(record, indent=2).encode())
    atomic_write(root / "table.md", table(record, recipe).encode())
    return record


def table(record: dict[str, Any], recipe: str) -> str:
    """A markdown table of this run against the published numbers."""
    nats = recipe == "mnist"
    unit = "test -log p(x) (nats)" if nats else "test bits/dim"
    ours = -record["log_px"] if nats else record["bits_per_dim"]
    rows = [f"| aevb hvae ({record['images']} test images, k={record['k']}) | {ours:.2f} |"]
    rows += [f"| {name} | {value:.2f} |" for name, value in PUBLISHED.get(recipe, [])]
    return f"| model | {unit} |\n|---|---|\n" + "\n".join(rows) + "\n"
