"""Pictures of what a model learned: sample grids and reconstruction pairs as PNG.

Images are tensors shaped (N, C, H, W) with values in [0, 1]; grey (C=1) and colour
(C=3) are both drawn. Figures are made with matplotlib's Agg backend (no display).

Conditional models (``num_classes > 0``) are drawn given labels: the true labels of data
images (reconstructions, scatter, interpolation, traversal), and for pictures of the
prior either one ``label`` or, for samples without one, a grid with one row per class.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .conditional import check_label, label_tensor, one_hot  # noqa: E402
from .images import tile  # noqa: E402


def image_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile (N, C, H, W) images into one (rows*H, cols*W[, C]) array with ``pad`` pixels between
    (``aevb.images.tile``), as matplotlib shows it."""
    arr = tile(images, ncol, pad).permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr


def _show(ax, arr: np.ndarray) -> None:
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig, path, dpi: int = 110, tight: bool = True):
    """Write ``fig`` to ``path`` (PNG, or the format the suffix names; the folder is created and the file
    written atomically, so a full disk leaves no half a PNG) or as PNG into a binary file object; close
    it and return ``path``."""
    from .checkpoint import atomic_write

    to_file = hasattr(path, "write")
    buf = path if to_file else io.BytesIO()
    fmt = "png" if to_file else (Path(path).suffix[1:].lower() or "png")
    try:
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    if not to_file:
        path = Path(path)
        atomic_write(path, buf.getvalue())
    return path


def check_finite_weights(model) -> None:
    """``ValueError`` saying so when the model's weights hold NaN or Inf (a run that diverged):
    its pictures would be blank, and its codes cannot be projected."""
    bad = {name: int((~torch.isfinite(p)).sum()) for name, p in model.named_parameters() if not torch.isfinite(p).all()}
    if bad:
        names = ", ".join(list(bad)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ValueError(f"the model's weights hold {sum(bad.values())} NaN or infinite values (in {names}): "
                         "training diverged, so there is nothing to draw; train again with a lower learning rate")


def _prior_label(model, label: int | None) -> int | None:
    """The label a picture of the prior is drawn for: ``label``, 0 for a conditional model without one."""
    label = check_label(label, model.config.num_classes)
    return 0 if label is None and model.config.conditional else label


def _label_tensor(model, label: int | None, n: int) -> torch.Tensor | None:
    return None if label is None else label_tensor(label, n, model.device)


@torch.no_grad()
def plot_samples(model, path: str | Path, n: int = 64, seed: int = 0, title: str | None = None,
                 label: int | None = None, codes=None, source: str | None = None, temperature=None) -> Path:
    """A grid of decoded means of z ~ p(z) (the model's prior). A conditional model draws all n for ``label``, or
    without one a grid with one row per class and max(1, n // classes) columns, each column one z.
    ``codes``: a function m -> m codes (m, *latent_shape) to decode instead of the prior's (a fitted sampler's,
    ``aevb.samplers``), and ``source`` the words naming them in the title ("from the GMM sampler");
    ``temperature`` (one number, or one per latent layer): the prior's, for a model whose ``sample_codes`` takes
    one (``aevb.models.hvae``; None: its default)."""
    check_finite_weights(model)
    g = torch.Generator(device=model.device).manual_seed(seed)
    tempered = {} if temperature is None else {"temperature": temperature}
    draw = codes or (lambda m: model.sample_codes(m, generator=g, **tempered))
    if model.config.conditional and label is None:
        return _plot_samples_per_class(model, path, n, draw, title, source)
    label = _prior_label(model, label)
    images = model.decode(draw(n), _label_tensor(model, label, n)).mean
    fig, ax = plt.subplots(figsize=(6, 6))
    _show(ax, image_grid(images))
    given = "" if label is None else f" for label {label}"
    if source is None:
        source = "from the prior" if model.capabilities.has_prior else "of codes z ~ N(0, I) (the model has no prior)"
    if temperature is not None:
        source += f" at temperature {temperature}"
    ax.set_title(title or f"{n} samples {source}{given} (decoded means)")
    return save_figure(fig, path)


def _plot_samples_per_class(model, path: str | Path, n: int, draw, title: str | None, source: str | None) -> Path:
    k = model.config.num_classes
    cols = max(1, n // k)
    z = draw(cols)
    labels = torch.arange(k, device=z.device).repeat_interleave(cols)  # (K * cols,): row r is label r
    images = model.decode(z.repeat(k, 1), labels).mean  # (K * cols, C, H, W)
    h, w = images.shape[-2:]
    fig, ax = plt.subplots(figsize=_figsize(h, w, k, cols, width=min(7.0, 0.6 * cols + 1.5)))
    ax.imshow(image_grid(images, ncol=cols), cmap="gray" if images.shape[1] == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(k)], [str(r) for r in range(k)], fontsize=8)
    ax.set_ylabel("label")
    ax.set_title(title or f"samples per label: one row per class, each column one z {source or 'from the prior'}",
                 fontsize=10)
    return save_figure(fig, path)


@torch.no_grad()
def plot_reconstructions(model, x: torch.Tensor, path: str | Path, n: int = 16, title: str | None = None,
                         y: torch.Tensor | None = None) -> Path:
    """Inputs (top row) above their reconstructions (bottom row), decoded at the posterior mean
    (a conditional model's given the true labels ``y``)."""
    check_finite_weights(model)
    x = x[:n].to(model.device)  # the images may be in host memory (the trainer keeps them there)
    y = None if y is None else y[:n].to(model.device)
    recon = model.reconstruct(x, y).reshape(x.shape)
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


# --- the latent space ------------------------------------------------------------------

PLOT_KINDS = ("manifold", "scatter", "samples", "reconstructions", "interpolate", "traverse", "curves")


def _figsize(h: int, w: int, rows: int, cols: int, width: float = 7.0) -> tuple[float, float]:
    """A figure size whose image area keeps the grid's aspect ratio (plus room for titles)."""
    aspect = (rows * h) / max(cols * w, 1)
    return width, max(1.6, width * aspect + 0.9)


def gaussian_quantiles(n: int, lo: float = 0.05, hi: float = 0.95) -> torch.Tensor:
    """n points of N(0, 1) at evenly spaced probabilities in [lo, hi] (the inverse CDF)."""
    p = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.distributions.Normal(0.0, 1.0).icdf(p).float()


def _check_dims(dims: tuple[int, int], latent_dim: int) -> tuple[int, int]:
    a, b = (int(d) for d in dims)
    if not (0 <= a < latent_dim and 0 <= b < latent_dim and a != b):
        raise ValueError(f"dims must be two different latent dimensions in 0..{latent_dim - 1}; got {a},{b}")
    return a, b


@torch.no_grad()
def latent_activity(model, x: torch.Tensor, y: torch.Tensor | None = None,
                    max_images: int = 2000) -> tuple[list[float], str]:
    """How much each latent dimension carries about ``x`` (at most ``max_images`` of them), and the measure:
    the mean KL(q(z_j|x) || p(z_j)) in nats, or, without a closed-form KL per dimension (or without a
    posterior), the variance of the codes over x."""
    from .evaluate import latent_statistics

    x = x[:max_images].to(model.device)
    y = None if y is None or not model.config.conditional else y[:max_images].to(model.device)
    if model.capabilities.has_posterior:
        stats = latent_statistics(model, x, y=y)
        if stats["kl_per_dim"] is not None:
            return stats["kl_per_dim"], "KL"
        return stats["active_unit_variances"], "variance of the posterior means"
    return latent_codes(model, x, y=y).double().var(0).tolist(), "variance of the codes"


def top_two(scores: list[float]) -> tuple[int, int]:
    """The indices of the two largest scores (ties to the lower index)."""
    first, second = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:2]
    return first, second


@torch.no_grad()
def plot_manifold(model, path: str | Path, dims: tuple[int, int] = (0, 1), n: int = 20,
                  label: int | None = None, why: str | None = None) -> Path:
    """Decoded means over an n x n grid of two latent dimensions, the grid's coordinates the 5%..95%
    quantiles of the prior's marginals (for N(0, I) the inverse Gaussian CDF, the paper's figure 4;
    for a learned prior, empirical quantiles of its draws, ``code_quantiles``); other dimensions held
    at the prior's median (0 for N(0, I)). A conditional model's grid is decoded for ``label`` (default 0);
    ``why``: how the dimensions were chosen, for the title."""
    zdim = model.latent_dim
    if zdim < 2:
        raise ValueError("a manifold plot needs a latent space of at least 2 dimensions")
    a, b = _check_dims(dims, zdim)
    label = _prior_label(model, label)
    probs = torch.linspace(0.05, 0.95, n, dtype=torch.float64)
    if hasattr(model, "code_quantiles"):
        grid, how = model.code_quantiles(probs)  # (n, Z)
        centre = model.code_quantiles(torch.tensor([0.5]))[0][0]  # (Z,)
    else:
        grid, how = gaussian_quantiles(n)[:, None].expand(n, zdim), "Gaussian quantiles"
        centre = torch.zeros(zdim)
    grid, centre = grid.to(model.device), centre.to(model.device)
    gaussian = how == "Gaussian quantiles"
    z = centre.repeat(n, n, 1)  # (n, n, zdim)
    z[..., a] = grid[:, a].view(1, n)  # columns: z[a] increasing to the right
    z[..., b] = grid[:, b].flip(0).view(n, 1)  # rows: z[b] increasing upwards
    images = model.decode(z.view(-1, zdim), _label_tensor(model, label, n * n)).mean  # (n*n, C, H, W)
    h, w = images.shape[-2:]
    fig, ax = plt.subplots(figsize=_figsize(h, w, n, n))
    arr = image_grid(images, ncol=n, pad=1)  # white lines between cells keep blurry digits apart
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest",
              extent=(-0.5, n - 0.5, n - 0.5, -0.5))
    ticks = sorted(set(range(0, n, max(1, n // 5))) | {n - 1})
    ax.set_xticks(ticks, [f"{grid[i, a]:.2f}" for i in ticks])
    ax.set_yticks(ticks, [f"{grid.flip(0)[i, b]:.2f}" for i in ticks])
    ax.set_xlabel(f"z[{a}]  ({how} 5%..95%)" if gaussian else f"z[{a}]  (prior marginal, {how} 5%..95%)")
    ax.set_ylabel(f"z[{b}]")
    rest = "" if zdim == 2 else f"; other {zdim - 2} dimensions at {'0' if gaussian else 'their prior medians'}"
    rest += "" if label is None else f"; label {label}"
    chosen = f" ({why})" if why else ""
    ax.set_title(f"learned manifold: decoded means over z[{a}], z[{b}]{chosen}{rest}", fontsize=10)
    return save_figure(fig, path)


def latent_codes(model, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """The codes of ``x`` (``aevb.evaluate.embed``) as float32 on the CPU, shaped (N, latent_dim)."""
    from .evaluate import embed

    return embed(model, x, y=y).float().cpu()


def project_2d(codes: torch.Tensor) -> tuple[torch.Tensor, list[str], torch.Tensor | None, torch.Tensor | None]:
    """(N, 2) points to draw, axis labels, and the PCA (mean, components) used (None for 2-D codes).
    With fewer than two images there is at most one principal component (none for one image): the
    missing axis is drawn at 0. ``ValueError`` when the codes are not finite (a diverged model)."""
    if not torch.isfinite(codes).all():
        bad = int((~torch.isfinite(codes)).any(1).sum())
        raise ValueError(f"the codes of {bad} of {len(codes)} images are NaN or infinite (the model diverged)")
    if codes.shape[1] == 2:
        return codes, ["z[0]", "z[1]"], None, None
    if codes.shape[1] == 1:
        return torch.cat([codes, torch.zeros_like(codes)], 1), ["z[0]", "(none)"], None, None
    mean = codes.double().mean(0)
    centred = codes.double() - mean
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    total = (s**2).sum()
    share = (s**2) / total if total > 0 else torch.zeros_like(s)
    comps = torch.zeros(2, codes.shape[1], dtype=torch.float64)  # (2, D); rows past the rank stay 0
    k = min(2, len(v))
    comps[:k] = v[:k]
    labels = [f"principal component {i + 1} of z ({100 * share[i]:.0f}% of variance)" if i < len(share)
              else f"principal component {i + 1} of z (none: {len(codes)} image(s))" for i in range(2)]
    return (centred @ comps.T).float(), labels, mean.float(), comps.float()


@torch.no_grad()
def plot_scatter(model, x: torch.Tensor, y: torch.Tensor | None, path: str | Path, max_points: int = 5000) -> Path:
    """Posterior means of ``x`` coloured by label (PCA to 2-D when the latent has more dimensions)."""
    x = x[:max_points]
    given = y[:max_points] if (y is not None and model.config.conditional) else None
    xy, labels, _, _ = project_2d(latent_codes(model, x, y=given))
    fig, ax = plt.subplots(figsize=(7, 6))
    if y is not None:
        y = y[:max_points].cpu()
        classes = torch.unique(y).tolist()
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            m = y == c
            ax.scatter(xy[m, 0], xy[m, 1], s=5, alpha=0.7, color=cmap(i % cmap.N), label=str(c), linewidths=0)
        ax.legend(title="label", markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=5, alpha=0.7, linewidths=0)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    what = model.capabilities.code_name
    ax.set_title(f"{what} of {len(x)} test images" + (", coloured by label" if y is not None else ""), fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _image_row(fig_axes, rows: list[torch.Tensor], row_labels: list[str], col_labels: list[str] | None) -> None:
    for ax, imgs, label in zip(fig_axes, rows, row_labels):
        _show(ax, image_grid(imgs, ncol=len(imgs)))
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if col_labels:
        ax = fig_axes[-1]
        n = len(col_labels)
        w = rows[-1].shape[-1] + 1
        ax.set_xticks([i * w + (w - 1) / 2 for i in range(n)], col_labels, fontsize=8)


@torch.no_grad()
def plot_interpolation(model, x_a: torch.Tensor, x_b: torch.Tensor, path: str | Path, steps: int = 10,
                       y_a: int | None = None, y_b: int | None = None) -> Path:
    """Decoded means along the straight line between the posterior means of two images,
    with the two inputs at the ends. A conditional model takes their labels and moves the
    one-hot label along the same line, from y_a to y_b."""
    dev = model.device
    x_a, x_b = x_a.to(dev), x_b.to(dev)
    t = torch.linspace(0, 1, steps, device=dev).view(-1, 1)
    ya, yb, y = _label_tensor(model, y_a, 1), _label_tensor(model, y_b, 1), None
    if ya is not None and yb is not None:
        k = model.config.num_classes
        y = (1 - t) * one_hot(ya, k, t.dtype) + t * one_hot(yb, k, t.dtype)  # (steps, K)
    za, zb = model.embed(x_a[None], ya), model.embed(x_b[None], yb)
    images = model.decode((1 - t) * za + t * zb, y).mean  # (steps, C, H, W)
    row = torch.cat([x_a[None], images, x_b[None]])
    h, w = row.shape[-2:]
    fig, ax = plt.subplots(figsize=_figsize(h, w, 1, len(row), width=min(12, 0.7 * len(row) + 1)))
    _image_row([ax], [row], [""], ["A"] + [f"{v:.2f}" for v in t.view(-1).tolist()] + ["B"])
    ax.set_xlabel("interpolation weight t in z = (1 - t) z_A + t z_B  (ends: the two inputs)", fontsize=9)
    ax.set_title("interpolation between two test images in latent space", fontsize=10)
    return save_figure(fig, path)


@torch.no_grad()
def plot_traversal(model, x: torch.Tensor | None, path: str | Path, max_dims: int = 10, steps: int = 9,
                   label: int | None = None) -> Path:
    """Each latent dimension (the first ``max_dims``) swept over Gaussian quantiles with the
    others fixed at the posterior mean of ``x`` (or at 0 when ``x`` is None); a conditional
    model is given ``label`` (x's label; default 0)."""
    dev = model.device
    zdim = model.latent_dim
    k = min(zdim, max_dims)
    label = _prior_label(model, label)
    if x is not None:
        base = model.embed(x.to(dev)[None], _label_tensor(model, label, 1))[0]
    else:
        base = torch.zeros(zdim, device=dev)
    values = gaussian_quantiles(steps).to(dev)
    z = base.repeat(k, steps, 1)  # (k, steps, zdim)
    for d in range(k):
        z[d, :, d] = values
    y = _label_tensor(model, label, k * steps)
    images = model.decode(z.view(-1, zdim), y).mean.view(k, steps, *model.config.input_shape)
    h, w = images.shape[-2:]
    fig, axes = plt.subplots(k, 1, figsize=_figsize(h, w, k, steps, width=min(10, 0.7 * steps + 1.2)))
    axes = np.atleast_1d(axes)
    _image_row(list(axes), list(images), [f"z[{d}]" for d in range(k)], [f"{v:.2f}" for v in values.tolist()])
    axes[-1].set_xlabel("value of the swept dimension (Gaussian quantiles)", fontsize=9)
    where = "a test image's posterior mean" if x is not None else "0"
    more = f" (first {k} of {zdim})" if k < zdim else ""
    axes[0].set_title(f"latent traversal: one dimension swept per row{more}, others at {where}", fontsize=10)
    return save_figure(fig, path)


@torch.no_grad()
def plot_factor_traversal(model, x: torch.Tensor, path: str | Path, dim_factors: list[tuple[str, float]],
                          max_dims: int = 10, steps: int = 9) -> Path:
    """A traversal of each latent dimension beside the ground-truth factor it captures most:
    ``dim_factors[d]`` is (factor name, share of that factor's entropy the dimension holds, in [0, 1])
    (``aevb.disentanglement.factor_of_each_dim``). Rows are the dimensions by decreasing share (the
    first ``max_dims``), each swept over Gaussian quantiles with the others at x's posterior mean."""
    dev = model.device
    zdim = model.latent_dim
    if len(dim_factors) != zdim:
        raise ValueError(f"dim_factors names {len(dim_factors)} dimensions; the model has {zdim}")
    dims = sorted(range(zdim), key=lambda d: -dim_factors[d][1])[:max_dims]
    base = model.embed(x.to(dev)[None], None)[0]
    values = gaussian_quantiles(steps).to(dev)
    z = base.repeat(len(dims), steps, 1)  # (rows, steps, zdim)
    for row, d in enumerate(dims):
        z[row, :, d] = values
    images = model.decode(z.view(-1, zdim), None).mean.view(len(dims), steps, *model.config.input_shape)
    h, w = images.shape[-2:]
    fig, axes = plt.subplots(len(dims), 1, figsize=_figsize(h, w, len(dims), steps, width=min(10, 0.7 * steps + 2.4)))
    axes = np.atleast_1d(axes)
    labels = [f"z[{d}]: {dim_factors[d][0]} {dim_factors[d][1]:.2f}" for d in dims]
    _image_row(list(axes), list(images), labels, [f"{v:.2f}" for v in values.tolist()])
    axes[-1].set_xlabel("value of the swept dimension (Gaussian quantiles)", fontsize=9)
    more = f", the {len(dims)} most informative of {zdim}" if len(dims) < zdim else ""
    axes[0].set_title(f"latent traversal beside the factor each dimension captures most (share of its entropy){more}",
                      fontsize=9)
    return save_figure(fig, path)


@torch.no_grad()
def plot_layer_reconstructions(model, x: torch.Tensor, path: str | Path, temperature: float = 1.0, seed: int = 0) -> Path:
    """A PNG for a model with latent layers (``aevb.hierarchy.has_layers``): the images x (top row), then one row
    per n = L, L-1, ..., 0: x's code with its top n layers kept and the rest drawn from the prior at
    ``temperature``; n = L is the reconstruction, n = 0 a sample."""
    model.eval()
    x = x.to(model.device)
    g = torch.Generator(device=model.device).manual_seed(seed)
    n_layers = len(model.latent_layer_sizes)
    shape = (len(x), *model.config.input_shape)
    keeps = list(range(n_layers, -1, -1))
    rows = [x.reshape(shape)]
    rows += [model.reconstruct_keeping(x, keep, generator=g, temperature=temperature).reshape(shape) for keep in keeps]
    images = torch.cat(rows).clamp(0, 1)
    h, w = images.shape[-2:]
    fig, ax = plt.subplots(figsize=(0.6 * len(x) + 1.8, 0.6 * len(rows) + 0.6))
    ax.imshow(image_grid(images, ncol=len(x)), cmap="gray" if images.shape[1] == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    labels = ["input"] + [f"top {k} kept" for k in keeps]
    ax.set_yticks([r * (h + 1) + (h - 1) / 2 for r in range(len(rows))], labels, fontsize=8)
    ax.set_title(f"each layer's share: the top n layers of the code kept, the rest drawn at T={temperature:g}",
                 fontsize=9)
    return save_figure(fig, path)


def plot_curves(metrics: list[dict], path: str | Path) -> Path:
    """Training and validation (or test, for a run without a validation split) ELBO, KL and
    reconstruction terms per epoch (nats per example)."""
    if not metrics:
        raise ValueError("no training metrics (metrics.jsonl is missing or empty)")
    epochs = [m.get("epoch", i + 1) for i, m in enumerate(metrics)]
    terms = [("elbo", "ELBO"), ("reconstruction", "reconstruction  E[log p(x|z)]"), ("kl", "KL(q(z|x) || p(z))")]
    splits = (("train", "-"), ("valid", "--"), ("test", ":"))
    terms = [(k, t) for k, t in terms if any(f"{s}_{k}" in m for m in metrics for s, _ in splits)]
    if not terms:
        raise ValueError("metrics.jsonl has no train_/valid_/test_ elbo, kl or reconstruction values")
    fig, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.6))
    axes = np.atleast_1d(axes)
    for ax, (key, title) in zip(axes, terms):
        for split, style in splits:
            pts = [(e, m[f"{split}_{key}"]) for e, m in zip(epochs, metrics) if m.get(f"{split}_{key}") is not None]
            if pts:
                ax.plot(*zip(*pts), style, marker="o" if len(pts) < 30 else None, ms=3, label=split)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5 on a short run
        ax.set_xlabel("epoch")
        ax.set_ylabel("nats per example")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("training curves", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


# What the count of each kind is (its own argument of make_plot and flag of `aevb plot`), and its range.
COUNTS = {"manifold": ("grid", 64), "samples": ("images", 1024), "reconstructions": ("images", 256),
          "scatter": ("points", 10000), "interpolate": ("steps", 64), "traverse": ("steps", 64)}


def manifold_dims(run, data=None) -> tuple[tuple[int, int], str]:
    """The two latent dimensions a manifold spans by default, and how they were chosen: the two most active
    on ``data`` (a ``Split``; ``latent_activity``), else by the KL per dimension of the run's latest
    evaluation (evaluation.json), else 0 and 1."""
    model = run.model
    if model.latent_dim <= 2:
        return (0, 1), ""
    if data is not None:
        scores, measure = latent_activity(model, data.x, data.y)
        return top_two(scores), f"the two most active dimensions, by {measure}"
    kl = (run.evaluation or {}).get("kl_per_dim") if hasattr(run, "evaluation") else None
    if kl and len(kl) == model.latent_dim:
        return top_two(kl), "the two most active dimensions, by KL in evaluation.json"
    return (0, 1), ""


def make_plot(run, kind: str, path: str | Path, *, data_dir: str | None = None, split: str = "test",
              dims: tuple[int, int] | None = None, n: int | None = None, seed: int = 0,
              index_a: int = 0, index_b: int = 1, dataset=None, label: int | None = None,
              grid: int | None = None, images: int | None = None, points: int | None = None,
              steps: int | None = None) -> Path:
    """Draw one ``kind`` of PLOT_KINDS for a loaded run (``aevb.run.Run``). ``label``: the
    class a conditional model's manifold and samples are drawn for (data images use their own).

    Each kind's count has its own name (``COUNTS``): ``grid`` (the manifold's side), ``images``
    (samples, reconstructions), ``points`` (scatter), ``steps`` (interpolate, traverse); ``n`` is
    whichever of them the kind has. ``dims``: the manifold's two dimensions; by default the two most
    active (highest KL) on the split's images (``manifold_dims``)."""
    if kind not in PLOT_KINDS:
        raise ValueError(f"unknown plot kind {kind!r}; choose from {', '.join(PLOT_KINDS)}")
    if kind in COUNTS:
        name, limit = COUNTS[kind]
        own = {"grid": grid, "images": images, "points": points, "steps": steps}[name]
        n = own if own is not None else n
        if n is not None and not 2 <= n <= limit:
            raise ValueError(f"{name} for a {kind} plot must be between 2 and {limit}; got {n}")
    model = run.model
    if kind == "curves":
        return plot_curves(run.metrics, path)
    check_finite_weights(model)
    if label is not None:
        _prior_label(model, label)  # checked for every kind
    if kind == "manifold":
        why = None
        if dims is None:
            try:
                data = (dataset if dataset is not None else run.dataset(data_dir)).split(split)
            except (ValueError, OSError):  # no data here: the evaluation's KL, else 0 and 1
                data = None
            dims, why = manifold_dims(run, data)
        return plot_manifold(model, path, dims=dims, n=n or 20, label=label, why=why)
    if kind == "samples":
        return plot_samples(model, path, n=n or 64, seed=seed, label=label)
    if kind == "curves":
        return plot_curves(run.metrics, path)
    ds = dataset if dataset is not None else run.dataset(data_dir)
    data = ds.split(split)
    dev = model.device
    y = data.y if model.config.conditional else None
    if model.config.conditional and y is None:
        raise ValueError(f"a conditional model's {kind} plot needs labels, and the {split} split has none")
    if kind == "scatter":
        return plot_scatter(model, data.x, data.y, path, max_points=n or 5000)
    if kind == "reconstructions":
        ys = None if y is None else y[: n or 16].to(dev)
        return plot_reconstructions(model, data.x[: n or 16].to(dev), path, n=n or 16, y=ys)
    if kind == "interpolate":
        for i in (index_a, index_b):
            if not 0 <= i < len(data.x):
                raise ValueError(f"image index {i} is outside the {split} split (0..{len(data.x) - 1})")
        ya, yb = (None, None) if y is None else (int(y[index_a]), int(y[index_b]))
        return plot_interpolation(model, data.x[index_a], data.x[index_b], path, steps=n or 10, y_a=ya, y_b=yb)
    if not 0 <= index_a < len(data.x):
        raise ValueError(f"image index {index_a} is outside the {split} split (0..{len(data.x) - 1})")
    return plot_traversal(model, data.x[index_a], path, steps=n or 9, label=None if y is None else int(y[index_a]))
