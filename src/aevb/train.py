"""The training loop.

The whole data set sits as tensors on the device; a minibatch is an index slice of
a per-epoch permutation (no per-item DataLoader). One step: objective(model, batch)
-> backward -> optimizer step. Running sums of the objective's terms stay on the
device; the host reads them only when it reports (progress bar every few steps,
metrics once per epoch), so steps do not wait on each other.

Determinism: the seed fixes the initialisation, each epoch's permutation (derived
from (seed, epoch), so no state is needed to replay it) and one generator for every
epsilon, every dynamic binarization draw and every input-noise draw (``--input-noise``), whose
state is checkpointed. A resumed
run therefore continues bit for bit where it stopped.

Single process:   aevb train --dataset mnist --binarize dynamic --epochs 10 --out runs/mnist
Data parallel:    torchrun --nproc_per_node=2 -m aevb train ...   (or aevb train --nproc 2 ...;
                  see aevb.distributed)
Mixed precision:  --precision bf16 (CPU and CUDA) or fp16 (CUDA, with a gradient scaler);
                  the networks run in that dtype, every log-density in float32.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .conditional import check_data_labels
from .corruption import corrupt
from .config import ConfigError, RunConfig, TrainConfig
from .data import Dataset, load_dataset
from .devices import resolve_device
from .distributed import DistInfo, ShardedNoise, all_reduce_sum, init_from_env
from .evaluate import evaluate_elbo
from .models import Capabilities, build_model
from .models.base import check_networks
from .objectives import OBJECTIVES
from .schedules import kl_weight

PROGRESS_EVERY = 25  # steps between progress-bar refreshes (each one synchronises with the device)
GUARD_EVERY = 25  # steps between reads of the guard's skip counter (each one synchronises)


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or an exploding gradient."""


class TrainingInterrupted(Exception):
    """Ctrl-C (SIGINT) during training: the state was checkpointed first, in ``run_dir``."""

    def __init__(self, run_dir: Path, message: str):
        super().__init__(message)
        self.run_dir = run_dir


class ObjectiveModule(nn.Module):
    """model + objective as one module, so that DistributedDataParallel sees the whole step
    through ``forward`` (the objective calls encode/decode, not the model's forward)."""

    def __init__(self, model: nn.Module, objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: torch.Tensor, generator, **kw) -> dict[str, torch.Tensor]:
        return self.objective(self.model, x, generator=generator, **kw)


def make_objective(config: RunConfig, capabilities: Capabilities | None = None) -> Callable[..., dict[str, Tensor]]:
    """The training objective the configuration names, checked against what the model can do
    (``capabilities``; built from the configuration when not given)."""
    t = config.train
    caps = capabilities or build_model(config.model).capabilities
    family = config.model.family
    if t.algorithm == "wake-sleep":
        if not (caps.has_posterior and caps.has_prior):
            raise ConfigError(f"the wake-sleep algorithm needs a recognition model q(z|x) and a prior; the {family} "
                              "model has no posterior or no prior (use the vae family)")
        if caps.conditional:
            raise ConfigError("wake-sleep does not train conditional models; use the aevb algorithm")
        from .wake_sleep import wake_sleep_step_loss

        return wake_sleep_step_loss
    name = t.objective or caps.default_objective
    if name not in caps.objectives:
        raise ConfigError(f"objective {name!r} does not apply to the {family} model, which trains on "
                          f"{' or '.join(caps.objectives)}")
    if name == "iwae":
        return partial(OBJECTIVES[name], k=t.iwae_k)
    if name == "elbo":
        return partial(OBJECTIVES[name], samples=t.samples, kl=t.estimator, free_bits=t.free_bits)
    return OBJECTIVES[name]


def make_optimizer(config: RunConfig, params) -> torch.optim.Optimizer:
    """Adagrad (the paper's), Adam or SGD with momentum 0.9, using PyTorch's fused kernels
    (one kernel for all parameters; docs/performance.md has the measurement)."""
    t = config.train
    cls, kw = {"adagrad": (torch.optim.Adagrad, {}), "adam": (torch.optim.Adam, {}),
               "sgd": (torch.optim.SGD, {"momentum": 0.9})}[t.optimizer]
    params = list(params)
    try:
        return cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or version
        return cls(params, lr=t.lr, weight_decay=t.weight_decay, **kw)


def tensorboard_writer(run_dir: Path):
    """A TensorBoard SummaryWriter into RUN_DIR/tensorboard when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional extra: pip install "aevb[tensorboard]"
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def binarize_draw(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Bernoulli(x) draw of every pixel, as uniform < x: the same distribution as
    torch.bernoulli, and faster on CPU (one vectorised uniform draw and a comparison)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.lt(u, x, out=u)  # written over the uniforms as 0.0 / 1.0


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def _check_data(config: RunConfig, ds: Dataset) -> None:
    if tuple(config.model.input_shape) != ds.shape:
        raise ValueError(f"model input_shape {config.model.input_shape} does not match data set {ds.name} {ds.shape}")
    if config.train.batch_size > len(ds.train):
        raise ValueError(f"batch size {config.train.batch_size} is larger than the training split "
                         f"({len(ds.train)} examples); lower the batch size")
    lo, hi = ds.train.x.min().item(), ds.train.x.max().item()
    if config.model.likelihood == "bernoulli" and (lo < 0 or hi > 1):
        raise ValueError(f"the Bernoulli decoder needs data in [0, 1]; {ds.name} spans [{lo}, {hi}]")
    if config.model.conditional:
        check_data_labels(ds, config.model.num_classes)


@dataclass
class Guard:
    """The skip guard's counters. They live on the device, so that a step never waits for the
    host; the host reads them every GUARD_EVERY steps and before every checkpoint."""

    skipped: Tensor  # steps skipped since the run began
    consecutive: Tensor  # steps skipped in a row
    bad_norm: Tensor  # the gradient norm of the last skipped step

    @classmethod
    def on(cls, device: torch.device) -> "Guard":
        return cls(torch.zeros((), dtype=torch.int64, device=device), torch.zeros((), dtype=torch.int64, device=device),
                   torch.zeros((), device=device))

    def record(self, bad: Tensor, norm: Tensor) -> None:
        self.skipped += bad
        self.consecutive = (self.consecutive + 1) * bad
        self.bad_norm = torch.where(bad, norm.detach().float(), self.bad_norm)


def _step_or_skip(optimizer: torch.optim.Optimizer, bad: Tensor, scaler, device_guard: bool) -> None:
    """Apply the gradients unless ``bad``. With a fused optimizer the decision stays on the device: the
    optimizer kernel reads it as ``found_inf`` (as torch.amp.GradScaler uses it), so weights, moments and
    step counts stay untouched by a skipped step. Otherwise (the gradient scaler, unfused optimizers)
    the host reads ``bad``."""
    if device_guard:
        optimizer.found_inf, optimizer.grad_scale = bad.float(), None
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale
    elif bool(bad):
        if scaler is not None:
            scaler.update()
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def guarded_step(step_fn: Callable[..., dict[str, Tensor]], optimizer: torch.optim.Optimizer, params: list[Tensor],
                 x: Tensor, y: Tensor | None, noise, beta, t: TrainConfig, guard: Guard,
                 autocast_dtype: torch.dtype | None = None, scaler=None,
                 device_guard: bool = False, x_in: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """One optimizer step, or a skipped one: forward, backward, clip, guard, step or skip.
    ``x_in``: a denoising model's corrupted batch, which the encoder reads instead of ``x``.

    Returns the objective's terms and a boolean device tensor, true when the step was skipped (the
    loss or the gradient norm not finite, or the norm above ``t.skip_grad_norm``). Nothing here waits
    for the device unless the optimizer cannot skip on it (``_step_or_skip``)."""
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        terms = step_fn(x, noise, beta=beta, y=y, **({} if x_in is None else {"x_in": x_in}))
    optimizer.zero_grad(set_to_none=True)
    loss = terms["loss"] if scaler is None else scaler.scale(terms["loss"])
    loss.backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])  # all-reduced: one decision
    if t.clip_grad_norm:
        torch.nn.utils.clip_grads_with_norm_(params, t.clip_grad_norm, norm)
    bad = ~torch.isfinite(norm) | (norm > t.skip_grad_norm)
    _step_or_skip(optimizer, bad, scaler, device_guard)
    guard.record(bad, norm)
    return terms, bad


class Trainer:
    """Owns one run: model, optimizer, data on the device, generators; the run directory is written
    through ``aevb.checkpoint``. ``encoder``/``decoder``: your own networks (``aevb.nets``)."""

    def __init__(self, config: RunConfig, out: str | Path, dataset: Dataset | None = None, progress: bool = True,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        self.config = config
        self.out = Path(out)
        t = config.train
        device = resolve_device(t.device)
        self.dist: DistInfo = init_from_env(device.type)
        if self.dist.enabled and device.type == "cuda":
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.progress = progress and self.dist.is_main
        if t.batch_size % self.dist.world_size:
            raise ConfigError(f"batch size {t.batch_size} is global and must divide by the {self.dist.world_size} "
                              "processes; choose a multiple")
        if t.precision == "fp16" and device.type != "cuda":
            raise ConfigError("precision fp16 needs CUDA (it uses a gradient scaler); on CPU use bf16")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            self.model = build_model(config.model, encoder=encoder, decoder=decoder).to(self.device)
        self.objective = make_objective(config, self.model.capabilities)
        ds = dataset if dataset is not None else load_dataset(config.data)
        _check_data(config, ds)
        self.data = ds.to(self.device)
        check_networks(self.model, self.data.train.x[:2], self._labels(torch.arange(min(2, len(ds.train)))))
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.step_module: nn.Module = ObjectiveModule(self.model, self.objective)
        if self.dist.enabled:
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None)
        self.noise = torch.Generator(device=self.device).manual_seed(t.seed + 1)
        self.step_noise = ShardedNoise(self.noise, self.dist) if self.dist.enabled else self.noise
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t.precision]
        self.scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" else None
        self.steps_per_epoch = len(self.data.train) // t.batch_size  # the last partial batch is dropped
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0
        self.global_step = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.epoch_seconds = 0.0
        self.metrics_lines = 0
        self.params = list(self.model.parameters())
        self.device_guard = self.scaler is None and bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))
        self.guard = Guard.on(self.device)
        self.step_fn = torch.compile(self.step_module) if t.compile else self.step_module
        self.compile_seconds: float | None = None
        self.interrupted = False
        self.tb = None

    # -- state -----------------------------------------------------------------------

    def save_state(self) -> None:
        if not self.dist.is_main:
            return
        extra = {"rng.noise": self.noise.get_state()}
        extra.update({f"sums.{k}": v for k, v in self.sums.items()})
        progress = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                    "epoch_seconds": self.epoch_seconds, "metrics_lines": self.metrics_lines,
                    "skipped": int(self.guard.skipped)}
        ckpt.save_train_state(self.out, self.model, self.optimizer, extra, progress)

    def restore(self) -> None:
        saved = ckpt.read_config(self.out)
        if saved.model != self.config.model:
            raise ckpt.CheckpointError(f"{self.out}: the model configuration differs from the saved one; "
                                       "resume with the run's own configuration")
        state = ckpt.restore_train_state(self.out, self.model, self.optimizer, self.noise, self.device)
        progress = state.progress
        self.sums = state.sums
        self.epoch = progress["epoch"]
        self.step_in_epoch = progress["step_in_epoch"]
        self.global_step = progress["global_step"]
        self.epoch_seconds = progress["epoch_seconds"]
        self.metrics_lines = progress["metrics_lines"]
        self.guard.skipped.fill_(progress.get("skipped", 0))
        if self.dist.is_main:
            ckpt.remove_temporaries(self.out)
            ckpt.truncate_metrics(self.out, self.metrics_lines)

    # -- loop ------------------------------------------------------------------------

    def _shard(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch (all of them in a single process)."""
        if not self.dist.enabled:
            return t
        b = len(t) // self.dist.world_size
        return t[self.dist.rank * b : (self.dist.rank + 1) * b]

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's shard of the global batch ``idx``."""
        return self._batches(idx)[0]

    def _batches(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's shard of the global batch ``idx`` and, for a denoising model
        (``train.input_noise``), of its corrupted copy, the encoder's input (else None)."""
        x = torch.index_select(self.data.train.x, 0, idx)  # faster than x[idx] on CPU
        if self.config.data.binarize == "dynamic" and not self.data.binary:
            x = binarize_draw(x, self.noise)  # drawn for the global batch on every rank
        noise = self.config.train.input_noise
        x_in = None if noise is None else self._shard(corrupt(x, noise, self.noise))  # global batch too
        return self._shard(x), x_in

    def _labels(self, idx: torch.Tensor) -> torch.Tensor | None:
        """This process's shard of the batch's labels, for a conditional model (else None)."""
        return self._shard(self.data.train.y[idx]) if self.config.model.conditional else None

    def step(self, x: torch.Tensor, y: torch.Tensor | None = None,
             x_in: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One guarded optimizer step (``guarded_step``) at this run's KL weight; ``y``: a conditional
        model's labels; ``x_in``: a denoising model's corrupted batch."""
        t = self.config.train
        beta = kl_weight(self.global_step, t.beta, t.kl_schedule, t.warmup_steps)
        if t.compile:  # a tensor, so that a KL schedule does not recompile the graph every step
            beta = torch.tensor(beta, device=self.device)
        return guarded_step(self.step_fn, self.optimizer, self.params, x, y, self.step_noise, beta, t, self.guard,
                            self.autocast_dtype, self.scaler, self.device_guard, x_in=x_in)

    def check_guard(self) -> None:
        """Stop the run when max_skips consecutive steps were skipped (reads the device counter)."""
        t = self.config.train
        count = int(self.guard.consecutive)
        if count < t.max_skips:
            return
        norm = float(self.guard.bad_norm)
        what = "not finite (NaN or Inf)" if not math.isfinite(norm) else f"{norm:.3g} > {t.skip_grad_norm:g}"
        state = self.out / ckpt.TRAIN_STATE
        kept = f"the last good checkpoint {state} is intact" if state.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"training stopped at step {self.global_step}: the last {count} steps were skipped (limit {t.max_skips}) "
            f"because the loss or gradient norm was {what}; {kept}. Lower the learning rate, clip the gradient "
            "norm, or check the data for NaN/Inf")

    def _accumulate(self, terms: dict[str, torch.Tensor], bad: torch.Tensor) -> None:
        """Add the step's terms to the epoch sums on the device (a skipped step adds nothing)."""
        items = [(k, v.detach().float()) for k, v in terms.items() if k != "loss"]
        items.append(("_steps", (~bad).float()))
        for k, v in items:
            v = torch.where(bad, 0.0, v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def _mean(self, key: str) -> float:
        steps = self.sums.get("_steps")
        return (self.sums[key] / (steps.clamp(min=1) if steps is not None else max(self.step_in_epoch, 1))).item()

    def _validate(self) -> dict[str, float]:
        """Validation ELBO terms; with several processes each scores a shard and the sums are all-reduced."""
        split = self.data.valid or self.data.test
        name = "valid" if self.data.valid is not None else "test"
        x = split.x.tensor_split(self.dist.world_size)[self.dist.rank]
        y = split.y.tensor_split(self.dist.world_size)[self.dist.rank] if self.config.model.conditional else None
        res = evaluate_elbo(self.model, x, batch_size=self.config.train.eval_batch_size,
                            kl=self.config.train.estimator, seed=self.dist.rank, y=y)
        keys = sorted(res)
        sums = torch.tensor([res[k] * len(x) for k in keys] + [len(x)], dtype=torch.float64, device=self.device)
        sums = all_reduce_sum(sums, self.dist)
        return {f"{name}_{k}": (sums[i] / sums[-1]).item() for i, k in enumerate(keys)}

    def _end_epoch(self) -> dict[str, Any]:
        line: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step,
                                "samples_seen": self.global_step * self.config.train.batch_size}
        keys = sorted(k for k in self.sums if k != "_steps")
        if keys:
            steps = self.sums.get("_steps", torch.tensor(float(self.step_in_epoch), device=self.device))
            totals = all_reduce_sum(torch.stack([self.sums[k].double() for k in keys] + [steps.double()]), self.dist)
            n = totals[-1].clamp(min=1)
            line.update({f"train_{k}": (totals[i] / n).item() for i, k in enumerate(keys)})
        self.model.eval()
        line.update(self._validate())
        self.model.train()
        line["seconds"] = round(self.epoch_seconds, 4)
        line["skipped_steps"] = int(self.guard.skipped)
        if self.compile_seconds is not None:
            line["compile_seconds"] = round(self.compile_seconds, 3)
            self.compile_seconds = None
        t = self.config.train
        line["kl_weight"] = kl_weight(self.global_step, t.beta, t.kl_schedule, t.warmup_steps)
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums = {}
        self.epoch_seconds = 0.0
        if not self.dist.is_main:
            return line
        ckpt.append_metrics(self.out, line)
        self.metrics_lines += 1
        if self.tb is not None:
            for key, value in line.items():
                if key not in ("epoch", "step", "samples_seen"):
                    self.tb.add_scalar(key.replace("_", "/", 1), value, self.global_step)
            self.tb.flush()
        return line

    def _catch_sigint(self):
        """Ctrl-C finishes the current step, checkpoints, and stops (main thread only)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self.interrupted:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self.interrupted = True

        return signal.signal(signal.SIGINT, handler)

    def run(self, stop_after_steps: int | None = None) -> list[dict[str, Any]]:
        """Train to ``config.train.epochs``; ``stop_after_steps`` stops early (for tests) after
        checkpointing, exactly as a killed run would have after its last checkpoint."""
        t = self.config.train
        main = self.dist.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.save_model(self.out, self.model, self.config)
            if self.tb is None:
                self.tb = tensorboard_writer(self.out)
        self.model.train()
        lines = []
        bar = tqdm(total=t.epochs * self.steps_per_epoch, initial=self.global_step, disable=not self.progress,
                   unit="step", dynamic_ncols=True)
        previous_handler = self._catch_sigint()
        try:
            while self.epoch < t.epochs:
                perm = epoch_permutation(len(self.data.train), t.seed, self.epoch, self.device)
                start = time.perf_counter()
                while self.step_in_epoch < self.steps_per_epoch:
                    i = self.step_in_epoch * t.batch_size
                    idx = perm[i : i + t.batch_size]
                    (x, x_in), y = self._batches(idx), self._labels(idx)
                    if t.compile and self.global_step == 0 and self.step_in_epoch == 0:
                        compile_start = time.perf_counter()  # the first call compiles: timed on its own
                        self._accumulate(*self.step(x, y, x_in))
                        self.compile_seconds = time.perf_counter() - compile_start
                        start = time.perf_counter()
                    else:
                        self._accumulate(*self.step(x, y, x_in))
                    self.step_in_epoch += 1
                    self.global_step += 1
                    bar.update(1)
                    checkpoint = bool(t.checkpoint_every and self.global_step % t.checkpoint_every == 0)
                    stopping = stop_after_steps is not None and self.global_step >= stop_after_steps
                    if self.global_step % GUARD_EVERY == 0 or checkpoint or stopping or self.interrupted:
                        self.check_guard()  # before any checkpoint, so a diverged state is never saved
                    if self.progress and self.global_step % PROGRESS_EVERY == 0:
                        key = "elbo" if "elbo" in self.sums else "reconstruction"
                        bar.set_postfix({f"train_{key}": f"{self._mean(key):.2f}", "epoch": self.epoch + 1})
                    if checkpoint:
                        self.epoch_seconds += time.perf_counter() - start
                        start = time.perf_counter()
                        self.save_state()
                    if stopping:
                        self.epoch_seconds += time.perf_counter() - start
                        self.save_state()
                        return lines
                    if self.interrupted:
                        self.epoch_seconds += time.perf_counter() - start
                        self.save_state()
                        raise TrainingInterrupted(self.out, f"interrupted at step {self.global_step}; checkpoint "
                                                  f"saved in {self.out}")
                self.epoch_seconds += time.perf_counter() - start
                self.check_guard()
                line = self._end_epoch()
                lines.append(line)
                valid = {k: v for k, v in line.items() if k.endswith("_elbo") or k.endswith("_reconstruction")}
                if main:
                    bar.write(f"epoch {line['epoch']}: " + ", ".join(f"{k} {v:.3f}" for k, v in valid.items()))
                    ckpt.save_model(self.out, self.model, self.config)
                    self.save_state()
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if self.tb is not None:
                self.tb.close()
                self.tb = None
        return lines




def train(config: RunConfig | None = None, out: str | Path | None = None, *, resume: bool = False,
          progress: bool = True, data: Dataset | None = None, stop_after_steps: int | None = None,
          preset: str | None = None, conditional: bool = False, overwrite: bool = False,
          encoder: nn.Module | None = None, decoder: nn.Module | None = None, trust_code: bool = False,
          **overrides: Any) -> ckpt.Run:
    """Train a model and return the loaded run.

    ``aevb.train(dataset="mnist", binarize="dynamic", epochs=10, out="runs/mnist")``: keyword
    settings name fields of the model, data or training configuration; ``model="ae"`` picks the
    family. ``resume=True`` continues the run in ``out`` with its own configuration (only
    ``aevb.runconfig.RESUMABLE`` may change). ``data`` passes an already loaded ``Dataset``;
    ``conditional=True`` conditions on its labels; ``overwrite=True`` replaces a run already in
    ``out``. ``encoder``/``decoder``: your own networks (the contract is in ``aevb.nets``); they
    are recorded in config.json by import path and arguments, never pickled; resuming such a run
    rebuilds them from there, with ``trust_code=True`` (or pass the instances again).
    """
    from .nets import load_network, network_spec
    from .runconfig import plan_run

    if resume:
        if out is None:
            raise ConfigError("resume=True needs out, the run directory to continue")
        plan = plan_run(resume=out, overrides=overrides, data=data)
        m = plan.config.model
        if encoder is None and m.encoder is not None:
            encoder = load_network(m.encoder, "encoder", trust_code)
        if decoder is None and m.decoder is not None:
            decoder = load_network(m.decoder, "decoder", trust_code)
    else:
        plan = plan_run(out=out, config=config, preset=preset, overrides=overrides, conditional=conditional,
                        data=data, overwrite=overwrite)
        specs = {part: network_spec(net) for part, net in (("encoder", encoder), ("decoder", decoder))
                 if net is not None}
        if specs:
            from dataclasses import replace

            plan.config = replace(plan.config, model=replace(plan.config.model, **specs))
    trainer = Trainer(plan.config, plan.out, dataset=plan.data, progress=progress, encoder=encoder, decoder=decoder)
    if plan.resume:
        trainer.restore()
    trainer.run(stop_after_steps=stop_after_steps)
    networks = {part: type(net) for part, net in (("encoder", encoder), ("decoder", decoder)) if net is not None}
    return ckpt.load(plan.out, networks=networks)  # the classes just trained with
