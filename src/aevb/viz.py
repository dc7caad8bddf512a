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


def _latent_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def plot_manifold(model, path: str | Path, dims: tuple[int, int] = (0, 1), n: int = 20) -> Path:
    """Decoded means over an n x n grid of the latent plane (dims[0], dims[1]), the grid's
    coordinates mapped through the inverse Gaussian CDF (the paper's figure 4); the other
    dimensions are held at 0 (the prior mean)."""
    zdim = model.latent_dim
    a, b = dims
    if not (0 <= a < zdim and 0 <= b < zdim and a != b):
        raise ValueError(f"dims must be two different latent dimensions in 0..{zdim - 1}; got {dims}")
    quantiles = torch.linspace(0.5 / n, 1 - 0.5 / n, n, dtype=torch.float64)
    values = torch.distributions.Normal(0.0, 1.0).icdf(quantiles).float()
    z = torch.zeros(n, n, zdim, device=_latent_device(model))
    z[..., a] = values.view(1, n).to(z.device)  # columns: dimension a, left to right
    z[..., b] = values.flip(0).view(n, 1).to(z.device)  # rows: dimension b, top to bottom (high at top)
    images = model.decode(z.view(-1, zdim)).mean
    h, w = images.shape[-2:]
    fig, ax = plt.subplots(figsize=(7, 7 * h / w))
    arr = image_grid(images, ncol=n, pad=0)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1,
              extent=(-0.5, n - 0.5, n - 0.5, -0.5), interpolation="nearest")
    ticks = list(range(0, n, max(1, n // 5)))
    ax.set_xticks(ticks, [f"{values[i]:.2f}" for i in ticks])
    ax.set_yticks(ticks, [f"{values.flip(0)[i]:.2f}" for i in ticks])
    ax.set_xlabel(f"z[{a}]")
    ax.set_ylabel(f"z[{b}]")
    rest = "" if zdim == 2 else f" (other {zdim - 2} dimensions at 0)"
    ax.set_title(f"learned manifold: decoded means over Gaussian quantiles of z[{a}], z[{b}]{rest}")
    return save_figure(fig, path)


def _project_2d(codes: torch.Tensor) -> tuple[torch.Tensor, str]:
    if codes.shape[1] == 2:
        return codes, "z"
    centred = codes - codes.mean(0)
    _, s, v = torch.linalg.svd(centred.double(), full_matrices=False)
    explained = (s[:2] ** 2).sum() / (s**2).sum()
    return (centred.double() @ v[:2].T).float(), f"PCA of z ({100 * explained:.0f}% of variance)"


@torch.no_grad()
def plot_scatter(model, x: torch.Tensor, y: torch.Tensor | None, path: str | Path, max_points: int = 5000) -> Path:
    """Posterior means of ``x`` coloured by label (PCA to 2-D for a larger latent)."""
    x = x[:max_points]
    codes = torch.cat([model.embed(x[i : i + 1000]) for i in range(0, len(x), 1000)]).cpu()
    xy, label = _project_2d(codes)
    fig, ax = plt.subplots(figsize=(7, 6))
    if y is not None:
        y = y[:max_points].cpu()
        classes = torch.unique(y).tolist()
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            m = y == c
            ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.6, color=cmap(i % cmap.N), label=str(c))
        ax.legend(title="label", markerscale=3, loc="best", fontsize=8)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
    pca = label != "z"
    ax.set_xlabel("first principal component of E[z|x]" if pca else "z[0]")
    ax.set_ylabel("second principal component of E[z|x]" if pca else "z[1]")
    ax.set_title(f"posterior means of {len(x)} test images" + (", coloured by label" if y is not None else "")
                 + (f"\n{label}" if pca else ""))
    return save_figure(fig, path)


@torch.no_grad()
def plot_interpolation(model, x_a: torch.Tensor, x_b: torch.Tensor, path: str | Path, steps: int = 10) -> Path:
    """Decoded means along the straight line between the posterior means of two images."""
    za, zb = model.embed(x_a[None]), model.embed(x_b[None])
    t = torch.linspace(0, 1, steps, device=za.device).view(-1, 1)
    images = model.decode(za + t * (zb - za)).mean
    row = torch.cat([x_a[None], images.reshape(steps, *x_a.shape), x_b[None]])
    fig, ax = plt.subplots(figsize=(1.0 * (steps + 2), 1.6))
    _show(ax, image_grid(row, ncol=steps + 2))
    ax.set_title(f"interpolation in latent space: input A, {steps} decoded steps from z_A to z_B, input B")
    return save_figure(fig, path)


@torch.no_grad()
def plot_traversal(model, x: torch.Tensor, path: str | Path, max_dims: int = 10, steps: int = 9,
                   span: float = 3.0) -> Path:
    """Each latent dimension swept over [-span, span] around the posterior mean of ``x``."""
    z0 = model.embed(x[None])[0]
    dims = min(model.latent_dim, max_dims)
    values = torch.linspace(-span, span, steps, device=z0.device)
    z = z0.repeat(dims, steps, 1)
    for d in range(dims):
        z[d, :, d] = values
    images = model.decode(z.view(-1, model.latent_dim)).mean
    fig, ax = plt.subplots(figsize=(steps * 0.8, dims * 0.8 + 0.6))
    arr = image_grid(images, ncol=steps, pad=0)
    h, w = images.shape[-2:]
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([w * i + w / 2 - 0.5 for i in range(steps)], [f"{v:.1f}" for v in values.tolist()])
    ax.set_yticks([h * d + h / 2 - 0.5 for d in range(dims)], [f"z[{d}]" for d in range(dims)])
    ax.set_xlabel("value of the swept dimension (others at the posterior mean of one test image)")
    ax.set_title(f"latent traversals ({dims} of {model.latent_dim} dimensions)")
    return save_figure(fig, path)


def plot_curves(metrics: list[dict], path: str | Path) -> Path:
    """Training and validation ELBO, reconstruction term and KL against epochs."""
    if not metrics:
        raise ValueError("no metrics to plot: metrics.jsonl is empty")
    epochs = [m["epoch"] for m in metrics]
    terms = [t for t in ("elbo", "reconstruction", "kl", "iwae") if any(k.endswith("_" + t) for k in metrics[-1])]
    fig, axes = plt.subplots(1, len(terms), figsize=(4.5 * len(terms), 3.6), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for prefix in ("train", "valid", "test"):
            key = f"{prefix}_{term}"
            if key in metrics[-1]:
                ax.plot(epochs, [m.get(key, float("nan")) for m in metrics], label=prefix, marker="." if len(epochs) < 40 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per example")
        ax.set_title({"elbo": "ELBO", "reconstruction": "E_q[log p(x|z)]", "kl": "KL(q(z|x) || p(z))",
                      "iwae": "IWAE bound"}[term])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
