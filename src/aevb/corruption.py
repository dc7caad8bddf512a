"""Input noise for denoising models, and the denoising itself.

A denoising autoencoder (Vincent et al. 2008) or VAE (Im et al. 2017, "denoising variational
autoencoders") is trained on corrupted inputs against clean targets: the encoder reads
x~ ~ C(x~|x), the likelihood scores the clean x. ``aevb train --input-noise SPEC`` corrupts every
training batch with ``corrupt`` (drawn from the trainer's seeded noise generator, so a resumed run
continues bit for bit), and the objectives take the corrupted batch as ``x_in``:

    aevb train --dataset mnist --input-noise gaussian:0.5 --out runs/mnist-dvae
    aevb denoise runs/mnist-dvae noisy.png                 # writes noisy-denoised.png

The corruptions (``spec`` strings, parsed by ``aevb.config.parse_input_noise``), for images in [0, 1]:

- ``gaussian:SIGMA``: x + N(0, SIGMA^2) per pixel, clipped to [0, 1] (images stay images);
- ``mask:P``: each pixel set to 0 with probability P (Vincent et al.'s masking noise);
- ``salt-pepper:P``: each pixel, with probability P, set to 0 or 1 with equal chance.

For a VAE the ELBO trained this way is that of the clean x given the corrupted input
(E_q(z|x~)[log p(x|z)] - KL(q(z|x~) || p(z)); Im et al.'s denoising criterion), not the ELBO of x.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .config import parse_input_noise


def corrupt(x: Tensor, spec: str, generator: torch.Generator | None = None) -> Tensor:
    """A corrupted copy of the images ``x`` (any shape, values in [0, 1]) under ``spec``; ``x`` is untouched."""
    kind, level = parse_input_noise(spec)
    if kind == "gaussian":
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + level * eps).clamp_(0, 1)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind == "mask":
        return torch.where(u < level, 0.0, x)
    # salt-pepper: u < P/2 -> 0 (pepper), P/2 <= u < P -> 1 (salt)
    return torch.where(u < level / 2, 0.0, torch.where(u < level, 1.0, x))


def psnr(x: Tensor, reference: Tensor) -> Tensor:
    """Peak signal-to-noise ratio of each image of ``x`` against ``reference`` (both (N, ...) in [0, 1]),
    in decibels: 10 log10(1 / MSE); shape (N,). Identical images give +inf."""
    mse = (x.float() - reference.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


@torch.no_grad()
def denoise(model, x: Tensor, y: Tensor | None = None, batch_size: int = 1000) -> Tensor:
    """The model's cleaned images of ``x`` (N, C, H, W): the decoded mean at the code of each
    (``model.embed``: a VAE's posterior mean, an AE's code), on the CPU, in [0, 1] for image data."""
    from .evaluate import embed

    dev = model.device
    codes = embed(model, x, batch_size=batch_size, y=y)
    out = [model.decode(z, None if y is None else y[i : i + batch_size].to(dev)).mean.float().cpu()
           for i, z in zip(range(0, len(codes), batch_size), codes.split(batch_size))]
    return torch.cat(out).clamp(0, 1)


def plot_denoising(noisy: Tensor, denoised: Tensor, clean: Tensor, path: str | Path, title: str = "") -> Path:
    """A figure of three rows, noisy / denoised / clean images (N, C, H, W in [0, 1]), with the PSNR
    against the clean image under each noisy and denoised one and each row's mean PSNR beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("noisy", noisy), ("denoised", denoised), ("clean", clean)]
    n = len(clean)
    fig, axes = plt.subplots(3, n, figsize=(1.0 * n + 1.6, 3.9), squeeze=False)
    for r, (name, images) in enumerate(rows):
        scores = psnr(images, clean) if name != "clean" else None
        for i in range(n):
            ax = axes[r][i]
            img = images[i].float().clamp(0, 1).cpu()
            ax.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if scores is not None:
                ax.set_xlabel(f"{scores[i]:.1f} dB", fontsize=7, labelpad=2)
        mean = "" if scores is None else f"\n{_finite_mean(scores):.1f} dB"
        axes[r][0].set_ylabel(name + mean, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite_mean(values: Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.inf
