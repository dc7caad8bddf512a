"""Labels for conditional models: one-hot codes, and the range checks done where labels enter.

A conditional model (``ModelConfig.num_classes = K > 0``) takes a label ``y`` beside x
(encoder) and z (decoder). ``y`` is either integer class indices shaped like the batch
(``(B,)``) or label weights shaped ``(B, K)`` (a one-hot row, or a mixture of classes,
as when interpolating between two labels). ``one_hot`` never reads values back from the
device, so it costs no synchronisation in a training step; labels are therefore
range-checked once where they enter the program (the trainer's data check, the CLI,
the explorer, evaluation), by ``check_labels``.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LabelError(ValueError):
    """A label is missing, not wanted, of the wrong kind, or out of range."""


def one_hot(y: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Integer labels (...,) -> (..., K) one-hot rows; label weights (..., K) pass through as ``dtype``."""
    if y.is_floating_point():
        if y.shape[-1] != num_classes:
            raise LabelError(f"label weights must have {num_classes} columns (one per class); "
                             f"got shape {tuple(y.shape)}")
        return y.to(dtype)
    classes = torch.arange(num_classes, device=y.device)
    return (y.unsqueeze(-1) == classes).to(dtype)  # out-of-range labels give a zero row: check_labels first


def check_labels(y: Tensor | None, num_classes: int, what: str = "labels") -> None:
    """Raise ``LabelError`` unless ``y`` holds integer labels in [0, num_classes) (one device read)."""
    if y is None:
        raise LabelError(f"this model is conditional on a label ({num_classes} classes); the {what} are missing")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise LabelError(f"{what} must be integer class indices; got {y.dtype}")
    if y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise LabelError(f"{what} must lie in 0..{num_classes - 1} (the model's {num_classes} classes); "
                         f"found {lo if lo < 0 else hi}")


def check_label(label: int | None, num_classes: int, what: str = "label", required: bool = False) -> int | None:
    """One integer label as a caller gave it (a command's option, a request's field): ``LabelError`` when
    the model is not conditional, when it is out of range, or when it is ``required`` and missing.
    The one check of a single label; the edges (CLI, HTTP) only turn the error into theirs."""
    if label is None:
        if required and num_classes:
            raise LabelError(f"this model is conditional: send a {what} between 0 and {num_classes - 1}")
        return None
    if num_classes == 0:
        raise LabelError(f"{what} needs a conditional model; this model is not conditional (it was trained "
                         "without labels)")
    if not 0 <= label < num_classes:
        raise LabelError(f"{what} must be between 0 and {num_classes - 1} (the model's {num_classes} classes); "
                         f"got {label}")
    return int(label)


def label_tensor(label: int, n: int, device: torch.device | str) -> Tensor:
    """``n`` copies of one integer label, shape (n,)."""
    return torch.full((n,), int(label), dtype=torch.long, device=device)


def num_classes_of(dataset) -> int:
    """How many classes a labelled data set has (``Dataset.num_classes``, else 1 + the largest
    training label); ``LabelError`` when it has no labels."""
    if dataset.train.y is None:
        raise LabelError(f"data set {dataset.name} has no labels; a conditional model needs a labelled data set "
                         "(digits, mnist, fashion_mnist, folder: with one sub-folder per class, npy: with y)")
    return int(dataset.num_classes or int(dataset.train.y.max()) + 1)


def check_data_labels(dataset, num_classes: int) -> None:
    """Every split of ``dataset`` has labels, all in [0, num_classes) (``LabelError`` otherwise)."""
    for name in ("train", "valid", "test"):
        split = getattr(dataset, name)
        if split is None:
            continue
        if split.y is None:
            raise LabelError(f"data set {dataset.name} has no labels in its {name} split; a conditional model "
                             "(num_classes > 0) needs a labelled data set")
        check_labels(split.y, num_classes, f"{dataset.name} {name} labels")
