"""The learning rate over a run, as ``TrainConfig.lr_schedule`` names it.

With ``lr`` the configured rate, W = ``lr_warmup_steps`` and s the optimizer step (from 0):

- ``constant``: lr at every step.
- ``warmup``:   lr * (s + 1) / W for s < W, then lr (Goyal et al. 2017).
- ``cosine``:   after the warm-up, lr_min + (lr - lr_min) * (1 + cos(pi * t)) / 2, t going from 0
                at the end of the warm-up to 1 at the last step of the configured epochs
                (Loshchilov & Hutter 2017, without restarts).
- ``step``:     lr * lr_gamma ** (epoch // lr_step_epochs) (after the warm-up ramp).
- ``plateau``:  lr times lr_gamma whenever the validation ELBO has not improved for ``lr_patience``
                epochs (``ReduceLROnPlateau``), watched from the end of the warm-up.

The closed forms are one ``torch.optim.lr_scheduler.LambdaLR`` stepped after every optimizer step
(skipped steps included: the schedule follows the step count, as the KL weight does); ``plateau`` is
``ReduceLROnPlateau`` stepped once an epoch. ``LRSchedule.state_dict`` is plain JSON (step counts,
the plateau's best value and counters), saved in the train state, so a resumed run continues the
schedule exactly. Raising ``epochs`` on resume stretches what is left of a cosine schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import TrainConfig


def lr_factor(step: int, t: TrainConfig, steps_per_epoch: int) -> float:
    """The multiplier of ``t.lr`` at optimizer step ``step`` (0-based) under the closed-form part of the
    schedule: the warm-up ramp, then cosine or step decay (1 for constant and plateau)."""
    w = t.lr_warmup_steps
    if step < w:
        return (step + 1) / w
    if t.lr_schedule == "cosine":
        total = t.epochs * steps_per_epoch
        progress = min(1.0, (step - w) / max(1, total - w))
        floor = t.lr_min / t.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if t.lr_schedule == "step":
        return t.lr_gamma ** ((step // steps_per_epoch) // t.lr_step_epochs)
    return 1.0


class LRSchedule:
    """The run's learning-rate schedulers on ``optimizer`` (none for a constant rate).

    ``after_step()`` after every optimizer step, ``after_epoch(score)`` with the epoch's validation
    ELBO; ``last_lr`` is the rate the latest step used."""

    def __init__(self, optimizer: torch.optim.Optimizer, t: TrainConfig, steps_per_epoch: int):
        self.optimizer = optimizer
        self.warmup_steps = t.lr_warmup_steps
        self.per_step: torch.optim.lr_scheduler.LambdaLR | None = None
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        if t.lr_schedule in ("warmup", "cosine", "step") or self.warmup_steps:
            def factor(step: int) -> float:  # a plain function: LambdaLR's state_dict then holds no callable
                return lr_factor(step, t, steps_per_epoch)

            self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        if t.lr_schedule == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=t.lr_gamma,
                                                                      patience=t.lr_patience)
        self.last_lr = self.lr

    @property
    def lr(self) -> float:
        """The rate the next step will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def after_step(self) -> None:
        self.last_lr = self.lr
        if self.per_step is None:
            return
        if self.plateau is None or self.per_step.last_epoch < self.warmup_steps:
            self.per_step.step()  # with plateau only the ramp is closed-form: then ReduceLROnPlateau owns the rate

    def after_epoch(self, score: float | None, global_step: int) -> None:
        if self.plateau is not None and score is not None and global_step >= self.warmup_steps:
            self.plateau.step(score)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: each scheduler's ``state_dict`` and the last rate used."""
        state: dict[str, Any] = {"last_lr": self.last_lr}
        if self.per_step is not None:
            state["per_step"] = self.per_step.state_dict()
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("per_step", "plateau"):
            scheduler = getattr(self, name)
            if (scheduler is None) != (name not in state):
                raise ValueError(f"the saved learning-rate schedule has {'no ' if name not in state else ''}"
                                 f"{name} scheduler; resume with the run's own lr_schedule")
            if scheduler is not None:
                scheduler.load_state_dict(dict(state[name]))
        self.last_lr = float(state.get("last_lr", self.lr))
