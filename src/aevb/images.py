"""Image tiling shared by the figures (``aevb.viz``) and the explorer (``aevb.serve``)."""

from __future__ import annotations

import math

import torch


def tile(images: torch.Tensor, ncol: int | None = None, pad: int = 1) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] -> one (C, rows*(H+pad)-pad, cols*(W+pad)-pad) image on the CPU,
    row by row, ``ncol`` per row (a square-ish grid by default), white ``pad`` pixels between them."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = torch.ones(c, nrow * (h + pad) - pad, ncol * (w + pad) - pad)
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = images[i]
    return grid
