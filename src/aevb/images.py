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


def fit_image(img, shape: tuple[int, int, int]) -> torch.Tensor:
    """A PIL image brought to a model's (C, H, W): grey (C = 1) or RGB (C = 3), resized to H x W
    (Lanczos), as float32 in [0, 1]."""
    import numpy as np
    from PIL import Image

    c, h, w = shape
    img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.LANCZOS)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    return x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)  # (H, W) or (H, W, C) -> (C, H, W)


def read_image(path, shape: tuple[int, int, int]) -> torch.Tensor:
    """The PNG/JPEG/... file at ``path`` as a (C, H, W) tensor for a model of input ``shape``
    (``fit_image``); a ValueError naming the file when it is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return fit_image(img, shape)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}); give a PNG or JPEG file") from None


def to_pil(image: torch.Tensor):
    """A (C, H, W) image in [0, 1] (C = 1 or 3) as a PIL image (grey or RGB), rounded to 8 bits."""
    import numpy as np
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)  # (C, H, W)
    return Image.fromarray(arr[0], "L") if arr.shape[0] == 1 else Image.fromarray(arr[:3].transpose(1, 2, 0), "RGB")


def write_image(image: torch.Tensor, path):
    """Write a (C, H, W) image, or a row (N, C, H, W) tiled left to right, as a PNG; returns the path."""
    from pathlib import Path

    if image.dim() == 4:
        image = tile(image, ncol=len(image))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path, format="PNG")
    return path
