"""Pictures of what a model learned: sample grids and reconstruction pairs as PNG.

Images are tensors shaped (N, C, H, W) with values in [0, 1]; grey (C=1) and colour
(C=3) are both drawn. Figures are made with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def image_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images into one (rows*H, cols*W[, C]) array with ``pad`` pixels between."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.ones(c, nrow * (h + pad) - pad, ncol * (w + pad) - pad)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = images[i]
    arr = grid.permute(1, 2, 0).numpy()
    return arr[..., 0] if c == 1 else arr


def _show(ax, arr: np.ndarray) -> None:
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_samples(model, path: str | Path, n: int = 64, seed: int = 0, title: str | None = None) -> Path:
    """A grid of decoded means of z ~ N(0, I)."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    images = model.sample(n, generator=g)
    fig, ax = plt.subplots(figsize=(6, 6))
    _show(ax, image_grid(images))
    ax.set_title(title or f"{n} samples from the prior, z ~ N(0, I) (decoded means)")
    return save_figure(fig, path)


@torch.no_grad()
def plot_reconstructions(model, x: torch.Tensor, path: str | Path, n: int = 16, title: str | None = None) -> Path:
    """Inputs (top row) above their reconstructions (bottom row), decoded at the posterior mean."""
    x = x[:n]
    recon = model.reconstruct(x).reshape(x.shape)
    ncol = min(n, 16)
    rows = []
    for start in range(0, len(x), ncol):
        rows += [x[start : start + ncol], recon[start : start + ncol]]
    fig, axes = plt.subplots(len(rows), 1, figsize=(ncol * 0.6, len(rows) * 0.75))
    axes = np.atleast_1d(axes)
    for i, (ax, imgs) in enumerate(zip(axes, rows)):
        _show(ax, image_grid(imgs, ncol=ncol))
        ax.set_ylabel("input" if i % 2 == 0 else "recon.", rotation=0, ha="right", va="center")
    axes[0].set_title(title or "test inputs (top) and reconstructions at the posterior mean (bottom)")
    return save_figure(fig, path)
