"""The training loop.

The whole data set sits as tensors on the device; a minibatch is an index slice of
a per-epoch permutation (no per-item DataLoader). One step: objective(model, batch)
-> backward -> optimizer step. Running sums of the objective's terms stay on the
device; the host reads them only when it reports (progress bar every few steps,
metrics once per epoch), so steps do not wait on each other.

Determinism: the seed fixes the initialisation, each epoch's permutation (derived
from (seed, epoch), so no state is needed to replay it) and one generator for every
epsilon and every dynamic binarization draw, whose state is checkpointed. A resumed
run therefore continues bit for bit where it stopped.

Single process:   aevb train --dataset mnist --binarize dynamic --epochs 10 --out runs/mnist
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import ConfigError, RunConfig
from .data import Dataset, load_dataset
from .evaluate import evaluate_elbo
from .model import build_model
from .objectives import ae_loss, elbo

PROGRESS_EVERY = 25  # steps between progress-bar refreshes (each one synchronises with the device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def make_objective(config: RunConfig) -> Callable[..., dict[str, torch.Tensor]]:
    """The training objective named by the configuration."""
    if config.train.algorithm == "wake-sleep":
        if config.model.kind != "vae":
            raise ConfigError("--algorithm wake-sleep needs a recognition model: use --kind vae")
        from .wake_sleep import wake_sleep_step_loss

        return wake_sleep_step_loss
    if config.model.kind == "ae":
        return ae_loss
    return partial(elbo, samples=config.train.samples, kl=config.train.estimator)


def make_optimizer(config: RunConfig, params) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=0.9, foreach=True)


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def _check_data(config: RunConfig, ds: Dataset) -> None:
    if tuple(config.model.input_shape) != ds.shape:
        raise ValueError(f"model input_shape {config.model.input_shape} does not match data set {ds.name} {ds.shape}")
    if config.train.batch_size > len(ds.train):
        raise ValueError(f"batch size {config.train.batch_size} is larger than the training split "
                         f"({len(ds.train)} examples); lower --batch-size")
    lo, hi = ds.train.x.min().item(), ds.train.x.max().item()
    if config.model.likelihood == "bernoulli" and (lo < 0 or hi > 1):
        raise ValueError(f"the Bernoulli decoder needs data in [0, 1]; {ds.name} spans [{lo}, {hi}]")


class Trainer:
    """Owns one run: model, optimizer, data on the device, generators, run directory."""

    def __init__(self, config: RunConfig, out: str | Path, dataset: Dataset | None = None, progress: bool = True):
        self.config = config
        self.out = Path(out)
        self.progress = progress
        self.device = resolve_device(config.train.device)
        ds = dataset if dataset is not None else load_dataset(config.data)
        _check_data(config, ds)
        self.data = ds.to(self.device)
        t = config.train
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            self.model = build_model(config.model).to(self.device)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.objective = make_objective(config)
        self.noise = torch.Generator(device=self.device).manual_seed(t.seed + 1)
        self.steps_per_epoch = len(self.data.train) // t.batch_size  # the last partial batch is dropped
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0
        self.global_step = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.epoch_seconds = 0.0
        self.metrics_lines = 0

    # -- state -----------------------------------------------------------------------

    def save_state(self) -> None:
        extra = {"rng.noise": self.noise.get_state()}
        extra.update({f"sums.{k}": v for k, v in self.sums.items()})
        progress = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                    "epoch_seconds": self.epoch_seconds, "metrics_lines": self.metrics_lines}
        ckpt.save_train_state(self.out, self.model, self.optimizer, extra, progress)

    def restore(self) -> None:
        saved = ckpt.read_config(self.out)
        if saved.model != self.config.model:
            raise ckpt.CheckpointError(f"{self.out}: the model configuration differs from the saved one; "
                                       "resume with the run's own config (aevb train --resume RUN_DIR)")
        tensors, progress, opt_meta = ckpt.load_train_state(self.out)
        weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.model.load_state_dict(weights)
        ckpt.optimizer_from_flat(self.optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")}, opt_meta)
        self.noise.set_state(tensors["rng.noise"])
        self.sums = {k[len("sums."):]: v.to(self.device) for k, v in tensors.items() if k.startswith("sums.")}
        self.epoch = progress["epoch"]
        self.step_in_epoch = progress["step_in_epoch"]
        self.global_step = progress["global_step"]
        self.epoch_seconds = progress["epoch_seconds"]
        self.metrics_lines = progress["metrics_lines"]
        metrics = self.out / ckpt.METRICS  # drop lines written after the checkpoint
        if metrics.exists():
            lines = metrics.read_text().splitlines(keepends=True)[: self.metrics_lines]
            ckpt.atomic_write(metrics, "".join(lines).encode())

    # -- loop ------------------------------------------------------------------------

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.data.train.x[idx]
        if self.config.data.binarize == "dynamic" and not self.data.binary:
            x = torch.bernoulli(x, generator=self.noise)
        return x

    def step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = self.objective(self.model, x, generator=self.noise)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()
        return terms

    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            if k != "loss":
                v = v.detach().float()
                self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()

    def _validate(self) -> dict[str, float]:
        split = self.data.valid or self.data.test
        name = "valid" if self.data.valid is not None else "test"
        res = evaluate_elbo(self.model, split.x, batch_size=self.config.train.eval_batch_size,
                            kl=self.config.train.estimator, seed=0)
        return {f"{name}_{k}": v for k, v in res.items()}

    def _end_epoch(self) -> dict[str, Any]:
        n = max(self.step_in_epoch, 1)
        line: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step,
                                "samples_seen": self.global_step * self.config.train.batch_size}
        line.update({f"train_{k}": (v / n).item() for k, v in self.sums.items()})
        self.model.eval()
        line.update(self._validate())
        self.model.train()
        line["seconds"] = round(self.epoch_seconds, 4)
        with open(self.out / ckpt.METRICS, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.metrics_lines += 1
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums = {}
        self.epoch_seconds = 0.0
        return line

    def run(self, stop_after_steps: int | None = None) -> list[dict[str, Any]]:
        """Train to ``config.train.epochs``; ``stop_after_steps`` stops early (for tests) after
        checkpointing, exactly as a killed run would have after its last checkpoint."""
        t = self.config.train
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt.save_model(self.out, self.model, self.config)
        self.model.train()
        lines = []
        bar = tqdm(total=t.epochs * self.steps_per_epoch, initial=self.global_step, disable=not self.progress,
                   unit="step", dynamic_ncols=True)
        try:
            while self.epoch < t.epochs:
                perm = epoch_permutation(len(self.data.train), t.seed, self.epoch, self.device)
                start = time.perf_counter()
                while self.step_in_epoch < self.steps_per_epoch:
                    i = self.step_in_epoch * t.batch_size
                    terms = self.step(self._batch(perm[i : i + t.batch_size]))
                    self._accumulate(terms)
                    self.step_in_epoch += 1
                    self.global_step += 1
                    bar.update(1)
                    if self.progress and self.global_step % PROGRESS_EVERY == 0:
                        key = "elbo" if "elbo" in self.sums else "reconstruction"
                        bar.set_postfix({f"train_{key}": f"{(self.sums[key] / self.step_in_epoch).item():.2f}",
                                         "epoch": self.epoch + 1})
                    if t.checkpoint_every and self.global_step % t.checkpoint_every == 0:
                        self.epoch_seconds += time.perf_counter() - start
                        start = time.perf_counter()
                        self.save_state()
                    if stop_after_steps is not None and self.global_step >= stop_after_steps:
                        self.epoch_seconds += time.perf_counter() - start
                        self.save_state()
                        return lines
                self.epoch_seconds += time.perf_counter() - start
                line = self._end_epoch()
                lines.append(line)
                valid = {k: v for k, v in line.items() if k.endswith("_elbo") or k.endswith("_reconstruction")}
                bar.write(f"epoch {line['epoch']}: " + ", ".join(f"{k} {v:.3f}" for k, v in valid.items()))
                ckpt.save_model(self.out, self.model, self.config)
                self.save_state()
        finally:
            bar.close()
        return lines


def train(config: RunConfig | None = None, out: str | Path = "runs/run", *, resume: bool = False,
          progress: bool = True, dataset: Dataset | None = None, stop_after_steps: int | None = None,
          **overrides: Any) -> ckpt.Run:
    """Train a model and return the loaded run.

    ``aevb.train(dataset="mnist", binarize="dynamic", epochs=10, out="runs/mnist")``:
    keyword overrides name fields of the model, data or training configuration.
    With ``resume=True`` the configuration is read from ``out`` and training continues.
    """
    if resume:
        config = ckpt.read_config(out)
        if overrides:
            config = apply_overrides(config, overrides)
    else:
        config = apply_overrides(config or default_config(overrides.get("dataset", "digits")), overrides)
    trainer = Trainer(config, out, dataset=dataset, progress=progress)
    if resume:
        trainer.restore()
    trainer.run(stop_after_steps=stop_after_steps)
    return ckpt.load(out)


def default_config(dataset: str = "digits") -> RunConfig:
    """Sensible defaults for a data set: its shape and usual likelihood."""
    from .data import DEFAULT_LIKELIHOOD

    shapes = {"digits": (1, 8, 8), "frey_face": (1, 28, 20)}
    cfg = RunConfig()
    cfg.data = replace(cfg.data, dataset=dataset)
    cfg.model = replace(cfg.model, input_shape=shapes.get(dataset, (1, 28, 28)),
                        likelihood=DEFAULT_LIKELIHOOD.get(dataset, "bernoulli"))
    return cfg


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Set fields by name on whichever of model/data/train has them (the train epochs can grow on resume)."""
    from dataclasses import fields

    parts = {"model": config.model, "data": config.data, "train": config.train}
    changes: dict[str, dict[str, Any]] = {k: {} for k in parts}
    for key, value in overrides.items():
        owners = [name for name, obj in parts.items() if key in {f.name for f in fields(obj)}]
        if not owners:
            raise ConfigError(f"unknown setting {key!r}")
        changes[owners[0]][key] = value
    return RunConfig(model=replace(config.model, **changes["model"]), data=replace(config.data, **changes["data"]),
                     train=replace(config.train, **changes["train"]), format_version=config.format_version)

