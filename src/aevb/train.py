"""The training loop.

The whole data set sits as tensors on the device; a minibatch is an index slice of
a per-epoch permutation (no per-item DataLoader). One step: objective(model, batch)
-> backward -> optimizer step. Running sums of the objective's terms stay on the
device; the host reads them only when it reports (progress bar every few steps,
metrics once per epoch), so steps do not wait on each other.

Determinism: the seed fixes the initialisation, each epoch's permutation (derived
from (seed, epoch), so no state is needed to replay it) and one generator for every
epsilon, every dynamic binarization draw and every input-noise draw (``--input-noise``), whose
state is checkpointed. A resumed run therefore continues bit for bit where it stopped. On CUDA
that needs deterministic kernels, which the trainer switches on while it runs
(``deterministic_kernels``; their cost is in docs/scaling.md; ``AEVB_DETERMINISTIC=0`` trades them
for speed).

Single process:   aevb train --dataset mnist --binarize dynamic --epochs 10 --out runs/mnist
Data parallel:    torchrun --nproc_per_node=2 -m aevb train ...   (or aevb train --nproc 2 ...;
                  see aevb.distributed)
Mixed precision:  --precision bf16 (CPU and CUDA) or fp16 (CUDA, with a gradient scaler);
                  the networks run in that dtype, every log-density in float32.

Around the loop: a learning-rate schedule (aevb.lr_schedules), the best epoch's weights by
validation ELBO in best.safetensors and early stopping (``patience``), and a ``RunLogger``
(aevb.tracking) for TensorBoard, MLflow and figures during training; all of their state is in
the checkpoint, so a resumed run still continues bit for bit. Feedback: a progress bar on a
terminal, otherwise one line per epoch.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import fastpath
from .conditional import check_data_labels
from .corruption import corrupt
from .config import ConfigError, RunConfig, TrainConfig
from .data import Dataset, Split, load_dataset
from .devices import resolve_device
from .distributed import (DistInfo, ShardedNoise, all_reduce_sum, any_rank, in_turns, init_from_env, on_main,
                          share_from_main, wait_for_all)
from .lr_schedules import LRSchedule
from .models import Capabilities, build_model
from .models.base import check_networks
from .objectives import OBJECTIVES, elbo
from .run import Run, load as load_run
from .schedules import kl_weight
from .tracking import RunLogger

if TYPE_CHECKING:
    from .runconfig import RunPlan

PROGRESS_EVERY = 25  # steps between progress-bar refreshes (each one synchronises with the device)
GUARD_EVERY = 25  # steps between reads of the guard's skip counter (each one synchronises)
MAX_SKIPPED_FRACTION = 0.5  # an epoch with more of its steps skipped stops the run (Trainer._check_epoch)


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
    settings = OBJECTIVE_SETTINGS.get(name)
    return partial(OBJECTIVES[name], **settings(t)) if settings else OBJECTIVES[name]


# The TrainConfig settings each objective reads, by objective name.
OBJECTIVE_SETTINGS: dict[str, Callable[[TrainConfig], dict[str, Any]]] = {
    "iwae": lambda t: {"k": t.iwae_k},
    "elbo": lambda t: {"samples": t.samples, "kl": t.estimator, "free_bits": t.free_bits},
    "tcvae": lambda t: {"estimator": t.tc_estimator, "alpha": t.tc_alpha, "gamma": t.tc_gamma},
    "dipvae-i": lambda t: {"lambda_od": t.dip_lambda_od, "lambda_d": t.dip_lambda_d, "samples": t.samples,
                           "kl": t.estimator, "free_bits": t.free_bits},
    "dipvae-ii": lambda t: {"lambda_od": t.dip_lambda_od, "lambda_d": t.dip_lambda_d, "samples": t.samples,
                            "kl": t.estimator, "free_bits": t.free_bits},
    "capacity": lambda t: {"capacity_max": t.capacity_max, "capacity_steps": t.capacity_steps,
                           "gamma": t.capacity_gamma, "samples": t.samples, "kl": t.estimator},
    "factorvae": lambda t: {"gamma": t.factor_gamma, "kl": t.estimator},
}


def takes_argument(objective: Callable[..., Any], name: str) -> bool:
    """Whether ``objective`` (a function or a partial of one) has a parameter ``name`` not bound already: the
    trainer passes ``dataset_size`` and ``step`` to the objectives that name them (``aevb.objectives``)."""
    try:
        return name in inspect.signature(objective).parameters
    except (TypeError, ValueError):  # a callable without a signature (a compiled or C function)
        return False


def make_optimizer(config: RunConfig, params) -> torch.optim.Optimizer:
    """Adagrad (the paper's), Adam or SGD with momentum 0.9, using PyTorch's fused kernels
    (one kernel for all parameters; docs/performance.md has the measurement) where they run on
    the parameters' devices and dtypes, else the default kernels."""
    t = config.train
    cls, kw = {"adagrad": (torch.optim.Adagrad, {}), "adam": (torch.optim.Adam, {}),
               "sgd": (torch.optim.SGD, {"momentum": 0.9})}[t.optimizer]
    params = list(params)
    if _fused_steps(cls, params, **kw):
        return cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=True, **kw)
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, **kw)


def _fused_steps(cls: type, params: list[Tensor], **kw: Any) -> bool:
    """Whether ``cls``'s fused kernel takes a step on every (device, dtype) of ``params``: tried on a
    one-element stand-in for each, since some builds accept ``fused=True`` in the constructor and
    fail only at the first step (Adagrad on CUDA)."""
    for device, dtype in {(p.device, p.dtype) for p in params}:
        probe = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
        probe.grad = torch.zeros_like(probe)
        try:
            cls([probe], lr=0.0, fused=True, **kw).step()
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device, dtype or version
            return False
    return True


@contextmanager
def deterministic_kernels(device: torch.device):
    """On CUDA, deterministic kernels for the duration: ``torch.use_deterministic_algorithms`` (an
    operation without a deterministic kernel warns), cuDNN's deterministic convolutions without
    autotuning, and cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, when unset), so
    that a seed fixes the trajectory and a resumed run continues bit for bit. Nothing changes on
    other devices (their kernels are deterministic already) or with ``AEVB_DETERMINISTIC=0``."""
    if device.type != "cuda" or os.environ.get("AEVB_DETERMINISTIC", "1") == "0":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.deterministic, cudnn.benchmark = before[2], before[3]


def binarize_draw(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Bernoulli(x) draw of every pixel, as uniform < x: the same distribution as
    torch.bernoulli, and faster on CPU (one vectorised uniform draw and a comparison)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    torch.lt(u, x, out=u)  # written over the uniforms as 0.0 / 1.0
    return u.add_(x, alpha=0)  # + 0 * x: a NaN pixel stays NaN (and its step is skipped), not 0


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def _check_data(config: RunConfig, ds: Dataset) -> None:
    if tuple(config.model.input_shape) != ds.shape:
        raise ValueError(f"model input_shape {config.model.input_shape} does not match data set {ds.name} {ds.shape}")
    if config.train.batch_size > len(ds.train):
        raise ValueError(f"batch size {config.train.batch_size} is larger than the training split "
                         f"({len(ds.train)} examples); lower the batch size")
    lo, hi, binary = ds.train.value_range()
    if config.model.likelihood == "bernoulli" and (lo < 0 or hi > 1):
        raise ValueError(f"the Bernoulli decoder needs data in [0, 1]; {ds.name} spans [{lo}, {hi}]")
    grey = not binary
    mode = config.data.binarize
    if config.model.likelihood == "bernoulli" and mode != "dynamic" and grey:
        raise ValueError(f"a Bernoulli decoder on {ds.name}'s grey levels with binarize {mode} fits no probability "
                         "of the data (log p(x) and bits/dim would mean nothing); set binarize to dynamic (or static, "
                         "which thresholds the data as it is read), or choose a gaussian or discretized_logistic "
                         "likelihood")
    if config.model.conditional:
        check_data_labels(ds, config.model.num_classes)


@dataclass(frozen=True)
class ValidationBatch:
    """One batch of the validation split as a single process cuts it, shared out over the ranks."""

    first: int  # this rank's first row in the split
    rows: int  # how many rows this rank scores
    shard_sizes: tuple[int, ...]  # every rank's rows of the batch


def validation_batches(n: int, batch_size: int, info: DistInfo) -> list[ValidationBatch]:
    """The split's n rows in batches of ``batch_size``, each divided over the ranks as ``tensor_split``
    divides it."""
    out = []
    for start in range(0, n, batch_size):
        q, r = divmod(min(batch_size, n - start), info.world_size)
        sizes = tuple(q + (i < r) for i in range(info.world_size))
        out.append(ValidationBatch(start + sum(sizes[: info.rank]), sizes[info.rank], sizes))
    return out


def _rows(split: Split, batches: list[ValidationBatch]) -> Split:
    """This rank's rows of ``split``, batch after batch."""
    idx = [torch.arange(b.first, b.first + b.rows) for b in batches]
    return split[torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)]


@torch.no_grad()
def validation_sums(model: nn.Module, x: Tensor, y: Tensor | None, batches: list[ValidationBatch], kl: str,
                    info: DistInfo, seed: int = 0) -> dict[str, Tensor]:
    """This rank's sums (float64, on x's device) of the validation terms over its rows ``x`` (``_rows``):
    the ELBO's with one sample of z (for a model without a posterior, its default objective's).
    Each batch's noise is drawn for the whole batch from one generator seeded ``seed``
    (``ShardedNoise``), so the sums over the ranks are those of one process, whatever their number."""
    caps = model.capabilities
    gen = torch.Generator(device=x.device).manual_seed(seed)
    sums: dict[str, Tensor] = {}
    offset = 0
    for b in batches:
        xb = x[offset : offset + b.rows]
        yb = None if y is None else y[offset : offset + b.rows]
        offset += b.rows
        if caps.has_posterior:
            noise = ShardedNoise(gen, info, b.shard_sizes) if info.enabled else gen  # one process: the same draws
            terms = elbo(model, xb, kl=kl, generator=noise, reduction="none", y=yb)
        else:
            terms = OBJECTIVES[caps.default_objective](model, xb, reduction="none", y=yb)
        for k, v in terms.items():
            if k != "loss":
                sums[k] = sums.get(k, 0) + v.double().sum()
    return sums


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


def _step_or_skip(optimizer: torch.optim.Optimizer, bad: Tensor, finite: Tensor, scaler, device_guard: bool) -> None:
    """Apply the gradients unless ``bad``. With a fused optimizer the decision stays on the device: the
    optimizer kernel reads it as ``found_inf`` (as torch.amp.GradScaler uses it), so weights, moments and
    step counts stay untouched by a skipped step. Otherwise (the gradient scaler, unfused optimizers)
    the host reads ``bad``. A gradient scaler backs off after a non-``finite`` gradient; a step skipped
    for a finite norm above the limit leaves its scale and growth count as they were."""
    if device_guard:
        optimizer.found_inf, optimizer.grad_scale = bad.float(), None
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale
    elif bool(bad):
        if scaler is not None:  # back off after an overflow (a non-finite norm), not after a large finite one
            scaler.update(None if not bool(finite) else scaler.get_scale())
    elif scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def guarded_step(step_fn: Callable[..., dict[str, Tensor]], optimizer: torch.optim.Optimizer, params: list[Tensor],
                 x: Tensor, y: Tensor | None, noise, beta, t: TrainConfig, guard: Guard,
                 autocast_dtype: torch.dtype | None = None, scaler=None,
                 device_guard: bool = False, x_in: Tensor | None = None,
                 objective_kw: dict[str, Any] | None = None,
                 hand_grads: Callable[..., dict[str, Tensor]] | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """One optimizer step, or a skipped one: forward, backward, clip, guard, step or skip.
    ``x_in``: a denoising model's corrupted batch, which the encoder reads instead of ``x``;
    ``objective_kw``: more keyword arguments of the objective (the step count of one that follows it);
    ``hand_grads(x, noise, beta)``: the objective's terms with every gradient already written into the
    parameters' ``.grad`` (``aevb.fastpath``), in place of ``step_fn`` and autograd.

    Returns the objective's terms and a boolean device tensor, true when the step was skipped (the
    loss or the gradient norm not finite, or the norm above ``t.skip_grad_norm``). Nothing here waits
    for the device unless the optimizer cannot skip on it (``_step_or_skip``)."""
    if hand_grads is not None:
        terms = hand_grads(x, noise, beta)
    else:
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            terms = step_fn(x, noise, beta=beta, y=y, **({} if x_in is None else {"x_in": x_in}),
                            **(objective_kw or {}))
        optimizer.zero_grad(set_to_none=True)
        loss = terms["loss"] if scaler is None else scaler.scale(terms["loss"])
        loss.backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])  # all-reduced: one decision
    if t.clip_grad_norm:
        torch.nn.utils.clip_grads_with_norm_(params, t.clip_grad_norm, norm)
    finite = torch.isfinite(norm)
    bad = ~finite | (norm > t.skip_grad_norm)
    _step_or_skip(optimizer, bad, finite, scaler, device_guard)
    guard.record(bad, norm)
    return terms, bad


def validation_score(line: dict[str, Any]) -> tuple[str, float] | None:
    """(key, value) of the epoch line's validation score, higher is better: the validation ELBO (the test
    split's for data without a validation split), or the reconstruction term of a model without one."""
    for term in ("elbo", "reconstruction"):
        for split in ("valid", "test"):
            key = f"{split}_{term}"
            if key in line:
                return key, float(line[key])
    return None


@dataclass
class BestEpoch:
    """The epoch with the best validation score so far, whose weights are in best.safetensors
    (``epoch`` 0: none yet)."""

    key: str | None = None
    score: float | None = None
    epoch: int = 0

    def update(self, score: tuple[str, float] | None, epoch: int) -> bool:
        """Record ``epoch`` when its score beats the best (a NaN never does); True if it did."""
        if score is None or not math.isfinite(score[1]) or (self.score is not None and score[1] <= self.score):
            return False
        self.key, self.score, self.epoch = score[0], score[1], epoch
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "score": self.score, "epoch": self.epoch}


class Trainer:
    """Owns one run: model, optimizer, data on the device, generators; the run directory is written
    through ``aevb.checkpoint``. ``encoder``/``decoder``: your own networks (``aevb.nets``)."""

    def __init__(self, config: RunConfig, out: str | Path, dataset: Dataset | None = None, progress: bool = True,
                 encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        self.config = config
        self.out = Path(out)
        t = config.train
        device = resolve_device(t.device)
        self.dist: DistInfo = init_from_env()
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
        ds = dataset if dataset is not None else in_turns(self.dist, lambda: load_dataset(config.data))
        _check_data(config, ds)
        if takes_argument(self.objective, "dataset_size"):  # beta-TCVAE's N: the training split the batches come from
            self.objective = partial(self.objective, dataset_size=len(ds.train))
        self.objective_takes_step = takes_argument(self.objective, "step")
        # The training split on the device (every rank draws batches from all of it); of the
        # validation split only this rank's rows; the rest stays where it was read.
        self.data = dataclasses.replace(ds, train=ds.train.to(self.device))
        split = ds.valid if ds.valid is not None else ds.test
        self.valid_name = "valid" if ds.valid is not None else "test"
        self.valid_batches = validation_batches(len(split), t.eval_batch_size, self.dist)
        self.valid_rows = _rows(split, self.valid_batches).to(self.device)
        check_networks(self.model, self.data.train[:2].x, self._labels(torch.arange(min(2, len(ds.train)))))
        self.params = self.model.optimized_parameters()
        self.optimizer = make_optimizer(config, self.params)
        self.auxiliary = self.model.auxiliary_optimizers()
        self.step_module: nn.Module = ObjectiveModule(self.model, self.objective)
        if self.dist.enabled:
            wait_for_all(self.dist)  # every rank has its data: DDP's first broadcast waits for no one
            trained = {id(p) for p in self.params}  # a family's own parameters are not the objective's
            own = [f"model.{n}" for n, p in self.model.named_parameters() if id(p) not in trained]
            if own:
                nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.step_module, own)
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
        self.device_guard = self.scaler is None and bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))
        self.guard = Guard.on(self.device)
        self.step_fn = torch.compile(self.step_module) if t.compile else self.step_module
        # The ELBO's step written out by hand where it computes the same (aevb.fastpath), else autograd.
        self.fast_path_refused = fastpath.why_not(self.model, t, self.dist.enabled)
        self.fast_step = None if self.fast_path_refused else fastpath.FastELBO.for_training(self.model, t).step
        self.compile_seconds: float | None = None
        self.interrupted = False
        self.lr_schedule = LRSchedule(self.optimizer, t, self.steps_per_epoch)
        self.best = BestEpoch()
        self.tracking: dict[str, Any] = {}  # the RunLogger's state (an MLflow run id) kept across resumes
        self.logger: RunLogger | None = None
        self._bar: tqdm | None = None

    # -- state -----------------------------------------------------------------------

    def save_state(self, weights: bool = False) -> None:
        """Checkpoint the training state (and with ``weights`` the model file). Every rank calls it at
        the same step: the partial epoch's sums are summed over the ranks, rank 0 writes, and the
        others wait for it (long timeout)."""
        sums = self._summed_over_ranks()
        progress = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                    "epoch_seconds": self.epoch_seconds, "metrics_lines": self.metrics_lines,
                    "skipped": int(self.guard.skipped), "best": self.best.as_dict(), **self.tracking}
        schedule = self.lr_schedule.state_dict() if self.lr_schedule.per_step or self.lr_schedule.plateau else None

        def write() -> None:
            if weights:
                ckpt.save_model(self.out, self.model, self.config)
            ckpt.save_train_state(self.out, self.model, self.optimizer, {f"sums.{k}": v for k, v in sums.items()},
                                  progress, generator=self.noise, scaler=self.scaler, schedule=schedule,
                                  auxiliary=self.auxiliary)

        on_main(self.dist, write)

    def _summed_over_ranks(self) -> dict[str, torch.Tensor]:
        """The partial epoch's sums added up over the ranks (each rank's own in one process)."""
        if not self.dist.enabled or not self.sums:
            return self.sums
        keys = sorted(self.sums)
        total = all_reduce_sum(torch.stack([self.sums[k].float() for k in keys]), self.dist)
        return dict(zip(keys, total.unbind()))

    def restore(self) -> None:
        """Continue from the run directory's training state: rank 0 reads it and sends it to the others
        (which need no access to the run directory)."""

        def read() -> bytes:
            saved = ckpt.read_config(self.out)
            if saved.model != self.config.model:
                raise ckpt.CheckpointError(f"{self.out}: the model configuration differs from the saved one; "
                                           "resume with the run's own configuration")
            return ckpt.read_train_state_bytes(self.out)

        data = share_from_main(self.dist, read)
        state = ckpt.restore_train_state(self.out, self.model, self.optimizer, self.noise, self.device,
                                         scaler=self.scaler, data=data, auxiliary=self.auxiliary)
        progress = state.progress
        # The saved sums are every rank's together: rank 0 carries them on, the others start at zero.
        self.sums = {k: v if self.dist.is_main else torch.zeros_like(v) for k, v in state.sums.items()}
        self.epoch = progress["epoch"]
        self.step_in_epoch = progress["step_in_epoch"]
        self.global_step = progress["global_step"]
        self.epoch_seconds = progress["epoch_seconds"]
        self.metrics_lines = progress["metrics_lines"]
        self.guard.skipped.fill_(progress.get("skipped", 0))
        self._restore_around_the_loop(state)

        def tidy() -> None:
            ckpt.remove_temporaries(self.out)
            ckpt.truncate_metrics(self.out, self.metrics_lines)

        on_main(self.dist, tidy)

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
        x = self.data.train.images(idx)  # float32; a packed split unpacks only these rows
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
        kw = None
        if self.objective_takes_step:  # the steps taken so far (a tensor when compiled, as beta is)
            kw = {"step": torch.tensor(self.global_step, device=self.device) if t.compile else self.global_step}
        terms, bad = guarded_step(self.step_fn, self.optimizer, self.params, x, y, self.step_noise, beta, t,
                                  self.guard, self.autocast_dtype, self.scaler, self.device_guard, x_in=x_in,
                                  objective_kw=kw, hand_grads=self.fast_step)
        extra = self.model.after_step(x, y, self.step_noise, bad)  # the family's own updates (none by default)
        return ({**terms, **extra} if extra else terms), bad

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
        """Validation ELBO terms: the same numbers on any number of processes (``validation_sums``)."""
        rows = self.valid_rows
        y = rows.y if self.config.model.conditional else None
        sums = validation_sums(self.model, rows.x, y, self.valid_batches, self.config.train.estimator, self.dist)
        keys = sorted(sums)
        count = torch.tensor(float(len(rows)), dtype=torch.float64, device=self.device)
        totals = all_reduce_sum(torch.stack([sums[k] for k in keys] + [count]), self.dist)
        return {f"{self.valid_name}_{k}": (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}

    def _end_epoch(self) -> dict[str, Any]:
        line: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step,
                                "samples_seen": self.global_step * self.config.train.batch_size}
        keys = sorted(k for k in self.sums if k != "_steps")
        if keys:
            steps = self.sums.get("_steps", torch.tensor(float(self.step_in_epoch), device=self.device))
            totals = all_reduce_sum(torch.stack([self.sums[k].double() for k in keys] + [steps.double()]), self.dist)
            n = totals[-1].clamp(min=1)
            line.update({f"train_{k}": (totals[i] / n).item() for i, k in enumerate(keys)})
            good = totals[-1].item() / self.dist.world_size  # every process counts the same steps
            line["skipped_fraction"] = round(1 - good / self.steps_per_epoch, 4)  # of this epoch's steps
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
        line["lr"] = self.lr_schedule.last_lr  # the rate of the epoch's last step
        self._check_epoch(line)
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums = {}
        self.epoch_seconds = 0.0
        score = validation_score(line)  # the same on every process: the validation sums are all-reduced
        self.best.update(score, self.epoch)
        self.lr_schedule.after_epoch(None if score is None else score[1], self.global_step)
        if not self.dist.is_main:
            return line
        ckpt.append_metrics(self.out, line)
        self.metrics_lines += 1
        if self.logger is not None:
            self.logger.epoch(line, self.global_step)
        return line

    def _check_epoch(self, line: dict[str, Any]) -> None:
        """Stop the run (before this epoch is saved) when most of its steps were skipped or its
        validation bound is not finite: the consecutive-skip limit cannot see that in a short epoch."""
        state = self.out / ckpt.TRAIN_STATE
        kept = (f"the last good checkpoint {state} is intact" if state.exists() else
                f"no checkpoint was written (delete {self.out} to train there again)")
        fix = "Lower the learning rate, clip the gradient norm, or check the data for NaN/Inf"
        fraction = line.get("skipped_fraction", 0.0)
        if fraction > MAX_SKIPPED_FRACTION:
            norm = float(self.guard.bad_norm)
            why = ("not finite (NaN or Inf)" if not math.isfinite(norm)
                   else f"above skip_grad_norm ({norm:.3g} > {self.config.train.skip_grad_norm:g})")
            skipped = round(fraction * self.steps_per_epoch)
            raise TrainingDiverged(
                f"training stopped after epoch {line['epoch']}: {skipped} of its {self.steps_per_epoch} steps "
                f"({fraction:.0%}) were skipped because the loss or gradient norm was {why}; {kept}. {fix}")
        bad = {k: v for k, v in line.items() if k.endswith(("_elbo", "_reconstruction")) and not k.startswith("train_")
               and not math.isfinite(v)}
        if bad:
            key, value = next(iter(bad.items()))
            raise TrainingDiverged(f"training stopped after epoch {line['epoch']}: {key} is {value} (the model "
                                   f"diverged); {kept}. {fix}")

    def _restore_around_the_loop(self, state: ckpt.TrainState) -> None:
        """The best epoch, the learning-rate schedule and the logger's state, from a checkpoint."""
        if state.progress.get("best"):
            self.best = BestEpoch(**state.progress["best"])
        self.tracking = {k: state.progress[k] for k in RunLogger.STATE_KEYS if k in state.progress}
        if state.schedule is not None:
            self.lr_schedule.load_state_dict(state.schedule)

    def _stop_early(self) -> bool:
        """True when ``patience`` epochs have passed since the best validation score."""
        patience = self.config.train.patience
        return bool(patience) and self.epoch - self.best.epoch >= patience

    # -- feedback --------------------------------------------------------------------

    def _say(self, message: str | None) -> None:
        """One line for the user (above the progress bar when there is one), from the main process; printed
        without a progress bar too (``progress=False`` turns the bar off, not the epoch lines)."""
        if not message or not self.dist.is_main:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def _data_summary(self) -> str | None:
        """What was found in a folder:/npy: data set and how it was split (None for a built-in data set)."""
        from .data.custom import is_custom

        name = self.config.data.dataset
        if not is_custom(name):
            return None
        d = self.data
        splits = [(what, part) for what, part in (("train", d.train), ("validation", d.valid), ("test", d.test))
                  if part is not None]
        classes = f"{d.num_classes} classes" if d.num_classes else "no labels"
        shape = "x".join(str(v) for v in d.shape)
        return (f"{name}: {sum(len(part) for _, part in splits)} images ({shape}), {classes}; split "
                + ", ".join(f"{len(part)} {what}" for what, part in splits) + " (a fixed shuffle)")

    def _epoch_summary(self, line: dict[str, Any]) -> str:
        t = self.config.train
        parts = []
        for key, value in line.items():
            if key.endswith(("_elbo", "_iwae", "_reconstruction")):
                name = f"{key} (k={t.iwae_k})" if key.endswith("_iwae") else key
                parts.append(f"{name} {value:.3f}")
        if self.lr_schedule.per_step is not None or self.lr_schedule.plateau is not None:
            parts.append(f"lr {line['lr']:.3g}")
        if line.get("skipped_fraction"):
            parts.append(f"skipped {line['skipped_fraction']:.0%} of steps")
        if t.patience and self.best.epoch != self.epoch:
            parts.append(f"no improvement for {self.epoch - self.best.epoch}/{t.patience} epochs")
        return f"epoch {line['epoch']}/{t.epochs}: " + ", ".join(parts)

    def _early_stop_summary(self) -> str:
        b, patience = self.best, self.config.train.patience  # a non-finite score stopped the run (_check_epoch)
        return (f"early stopping after epoch {self.epoch}: {b.key} has not improved for {patience} epochs "
                f"(best {b.score:.3f} at epoch {b.epoch}, kept in {ckpt.BEST})")

    def _progress_key(self) -> str | None:
        return next((k for k in ("elbo", "iwae", "reconstruction") if k in self.sums), None)

    def _catch_sigint(self):
        """Ctrl-C finishes the current step, checkpoints, and stops (main thread only); with several
        processes, at the step they agree on (``_stop_requested``)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self.interrupted:  # a second Ctrl-C: stop at once
                raise KeyboardInterrupt
            self.interrupted = True

        return signal.signal(signal.SIGINT, handler)

    def _stop_requested(self, poll: bool) -> bool:
        """Whether Ctrl-C reached the run: in one process at once; with several, only at ``poll`` steps
        (the same on every rank), where one all-reduce tells every rank whether any was interrupted,
        so that all of them stop at the same step."""
        if not self.dist.enabled:
            return self.interrupted
        return poll and any_rank(self.interrupted, self.dist)

    def _start_files(self) -> None:
        """The run directory, the model file and the run's logger (TensorBoard, MLflow): rank 0 only."""
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt.save_model(self.out, self.model, self.config)
        self.logger = RunLogger(self.out, self.config, self.model, self.data, self.tracking)
        self.tracking = self.logger.state

    def run(self, stop_after_steps: int | None = None,
            stop_when: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
        """Train to ``config.train.epochs`` (or until ``patience`` epochs without a better validation
        ELBO); ``stop_after_steps`` stops early (for tests) after checkpointing, exactly as a killed
        run would have after its last checkpoint. ``stop_when()``, asked after every step (one process
        only: the ranks would not agree), stops the same way when it returns True (a CPU-time budget)."""
        with deterministic_kernels(self.device):
            return self._run(stop_after_steps, stop_when)

    def _run(self, stop_after_steps: int | None,
             stop_when: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
        t = self.config.train
        main = self.dist.is_main
        on_main(self.dist, self._start_files)
        self.model.train()
        lines = []
        self._bar = bar = tqdm(total=t.epochs * self.steps_per_epoch, initial=self.global_step, unit="step",
                               disable=not (self.progress and sys.stderr.isatty()), dynamic_ncols=True)
        previous_handler = self._catch_sigint()
        status = "failed"
        try:
            if self.global_step == 0:
                self._say(self._data_summary())
            while self.epoch < t.epochs and not self._stop_early():
                perm = epoch_permutation(len(self.data.train), t.seed, self.epoch, self.device)
                start = time.perf_counter()
                while self.step_in_epoch < self.steps_per_epoch:
                    i = self.step_in_epoch * t.batch_size
                    idx = perm[i : i + t.batch_size]
                    (x, x_in), y = self._batches(idx), self._labels(idx)
                    if t.compile and self.global_step == 0 and self.step_in_epoch == 0:
                        self._say("compiling the training step with torch.compile (the first step takes a while; "
                                  "later runs reuse the cache)")
                        compile_start = time.perf_counter()  # the first call compiles: timed on its own
                        self._accumulate(*self.step(x, y, x_in))
                        self.compile_seconds = time.perf_counter() - compile_start
                        self._say(f"compiled in {self.compile_seconds:.1f} s")
                        start = time.perf_counter()
                    else:
                        self._accumulate(*self.step(x, y, x_in))
                    self.lr_schedule.after_step()
                    self.step_in_epoch += 1
                    self.global_step += 1
                    bar.update(1)
                    checkpoint = bool(t.checkpoint_every and self.global_step % t.checkpoint_every == 0)
                    stopping = ((stop_after_steps is not None and self.global_step >= stop_after_steps)
                                or (stop_when is not None and stop_when()))
                    poll = self.global_step % GUARD_EVERY == 0 or checkpoint or stopping
                    interrupted = self._stop_requested(poll)
                    if poll or interrupted:
                        self.check_guard()  # before any checkpoint, so a diverged state is never saved
                    key = self._progress_key()
                    if not bar.disable and key and self.global_step % PROGRESS_EVERY == 0:
                        bar.set_postfix({f"train_{key}": f"{self._mean(key):.2f}", "epoch": self.epoch + 1})
                    if checkpoint:
                        self.epoch_seconds += time.perf_counter() - start
                        start = time.perf_counter()
                        self.save_state()
                    if stopping:
                        self.epoch_seconds += time.perf_counter() - start
                        self.save_state()
                        status = "paused"
                        return lines
                    if interrupted:
                        self.epoch_seconds += time.perf_counter() - start
                        self.save_state()
                        status = "interrupted"
                        raise TrainingInterrupted(self.out, f"interrupted at step {self.global_step}; checkpoint "
                                                  f"saved in {self.out}")
                self.epoch_seconds += time.perf_counter() - start
                self.check_guard()
                line = self._end_epoch()
                lines.append(line)
                if main:
                    self._say(self._epoch_summary(line))
                self.save_state(weights=True)
                if main and self.best.epoch == self.epoch:
                    ckpt.save_best(self.out, self.model, self.best.as_dict())
            if self.epoch < t.epochs:
                self._say(self._early_stop_summary())
            status = "finished"
        finally:
            bar.close()
            self._bar = None
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if self.logger is not None:
                logger, self.logger = self.logger, None
                logger.close(status)
        return lines


def plan_on_rank_zero(**plan_args: Any) -> "RunPlan":
    """``aevb.runconfig.plan_run(**plan_args)`` for every process of a run (joining the process group
    torchrun describes): rank 0 plans, so it alone reads the run directory (a resumed run's
    configuration and progress) and it reads, or downloads, the data first; the others receive the
    configuration and then read the data in turns (``distributed.in_turns``). One process: plan_run."""
    from .runconfig import RunPlan, plan_run

    info = init_from_env()
    if not info.enabled:
        return plan_run(**plan_args)
    planned: list[RunPlan] = []

    def plan() -> bytes:
        p = plan_run(**plan_args)
        if p.data is None:
            p.data = load_dataset(p.config.data)
        planned.append(p)
        return json.dumps({"config": p.config.to_json(), "out": str(p.out), "resume": p.resume}).encode()

    shared = json.loads(share_from_main(info, plan))
    p = planned[0] if planned else RunPlan(RunConfig.from_json(shared["config"]), Path(shared["out"]),
                                           shared["resume"], plan_args.get("data"))
    p.data = in_turns(info, lambda: p.data if p.data is not None else load_dataset(p.config.data))
    return p


def train(config: RunConfig | None = None, out: str | Path | None = None, *, resume: bool = False,
          progress: bool = True, data: Dataset | None = None, stop_after_steps: int | None = None,
          preset: str | None = None, conditional: bool = False, overwrite: bool = False,
          encoder: nn.Module | None = None, decoder: nn.Module | None = None, trust_code: bool = False,
          **overrides: Any) -> Run:
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

    if resume:
        if out is None:
            raise ConfigError("resume=True needs out, the run directory to continue")
        plan = plan_on_rank_zero(resume=out, overrides=overrides, data=data)
        m = plan.config.model
        if encoder is None and m.encoder is not None:
            encoder = load_network(m.encoder, "encoder", trust_code)
        if decoder is None and m.decoder is not None:
            decoder = load_network(m.decoder, "decoder", trust_code)
    else:
        plan = plan_on_rank_zero(out=out, config=config, preset=preset, overrides=overrides, conditional=conditional,
                                 data=data, overwrite=overwrite, own_networks=encoder is not None or decoder is not None)
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
    return load_run(plan.out, networks=networks)  # the classes just trained with
