"""Attribute directions from labels: steering an image's code toward the image you want.

The mean code of the images with one label minus the mean code of the others (or of another
label, or of any two labelled subsets) is a direction in the latent space; adding A times it to
an image's code and decoding moves the picture toward that label while the rest of the code
keeps its style ("attribute vectors": Larsen et al. 2016, section 5; White 2016). At amount 1 a
code moves by the whole difference of the two means.

    aevb edit runs/mnist --image three.png --toward 8 --amount 1.0       # RUN/three-toward-8.png
    aevb serve runs/mnist                                                # the "steer" slider

    codes, labels = labelled_codes(run.model, run.dataset().train)
    d = label_direction(codes, labels, toward=[8])              # 8s minus every other digit
    z = steer(run.model.embed(x), d, amount=1.0)

Codes are ``model.embed`` (a VAE's posterior means, an AE's codes), so every model family works. A
conditional model is refused: its label is an input of its own, so choose the label instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


class SteeringError(ValueError):
    """A direction that cannot be made: no labels, an empty subset, a conditional model."""


@dataclass
class Direction:
    """A direction in the latent space: ``vector`` (Z,) = mean code of ``toward`` - mean code of
    ``away`` (None: every image not in ``toward``), from ``n_toward`` and ``n_away`` codes."""

    vector: Tensor
    toward: tuple[int, ...]
    away: tuple[int, ...] | None
    n_toward: int
    n_away: int

    def to_dict(self) -> dict:
        return {"direction": [round(v, 6) for v in self.vector.tolist()], "toward": list(self.toward),
                "away": None if self.away is None else list(self.away), "n_toward": self.n_toward,
                "n_away": self.n_away, "norm": round(float(self.vector.norm()), 6)}


def mean_difference(codes: Tensor, toward: Tensor, away: Tensor) -> Tensor:
    """Mean of ``codes`` (N, Z) over the rows where ``toward`` (N,) is true minus the mean over the
    rows where ``away`` (N,) is true: (Z,), in float32. Any two labelled subsets."""
    if not bool(toward.any()) or not bool(away.any()):
        raise SteeringError(f"both subsets need codes; got {int(toward.sum())} toward and {int(away.sum())} away")
    codes = codes.double()
    return (codes[toward].mean(0) - codes[away].mean(0)).float()


def label_direction(codes: Tensor, labels: Tensor, toward: Sequence[int],
                    away: Sequence[int] | None = None) -> Direction:
    """The direction from the codes labelled ``away`` (None: all the others) to those labelled
    ``toward``; ``codes`` (N, Z), ``labels`` (N,) integers."""
    toward = tuple(int(v) for v in toward)
    away = None if away is None else tuple(int(v) for v in away)
    present = sorted(set(labels.tolist()))
    for name, wanted in (("toward", toward), ("away", away or ())):
        missing = [v for v in wanted if v not in present]
        if missing:
            raise SteeringError(f"{name}: no image has label {missing[0]}; the labels are "
                                f"{', '.join(str(v) for v in present)}")
    if away is not None and set(toward) & set(away):
        raise SteeringError(f"toward and away share label(s) {sorted(set(toward) & set(away))}; give two "
                            "different subsets")
    in_toward = torch.isin(labels, torch.tensor(toward, dtype=labels.dtype, device=labels.device))
    in_away = ~in_toward if away is None else torch.isin(labels, torch.tensor(away, dtype=labels.dtype,
                                                                               device=labels.device))
    if not bool(in_away.any()):
        raise SteeringError(f"every image has a toward label {list(toward)}; there is nothing to steer away from")
    vector = mean_difference(codes.cpu(), in_toward.cpu(), in_away.cpu())
    return Direction(vector, toward, away, int(in_toward.sum()), int(in_away.sum()))


@torch.no_grad()
def labelled_codes(model, split, n: int | None = None, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """The codes (N, Z) of the first ``n`` images of a labelled ``split`` (all when None) and their
    labels (N,), on the CPU."""
    from .evaluate import embed

    if model.capabilities.conditional:
        raise SteeringError("this model is conditional on the label, which it takes as an input: choose the "
                            "label instead of steering toward it")
    if split.y is None:
        raise SteeringError("attribute directions need labels, and this data set has none")
    shape = tuple(model.config.input_shape)
    if tuple(split.x.shape[1:]) != shape:
        raise SteeringError(f"the data set's images are {tuple(split.x.shape[1:])}; the model takes {shape}")
    x, y = split.x[:n], split.y[:n]
    return embed(model, x, batch_size=batch_size).float().cpu(), y.cpu()


def steer(z: Tensor, direction: Direction | Tensor, amount: float) -> Tensor:
    """``z + amount * direction``: codes (..., Z) moved along the direction (a ``Direction`` or a (Z,) vector)."""
    vector = direction.vector if isinstance(direction, Direction) else direction
    return z + amount * vector.to(device=z.device, dtype=z.dtype)
