"""What a model with several latent layers reports about each of them: evaluation terms, the report's table
and the figure of what each layer encodes.

A model takes part by having ``kl_per_layer(x, y, generator)`` -> (B, L), the closed-form KL of each layer
at a draw of z ~ q(z|x) (the ELBO's KL is their sum), and ``latent_layer_sizes`` (the code's dimensions of
each layer, top first, the code being their concatenation); ``reconstruct_keeping(x, keep, generator,
temperature)`` adds the figure. Nothing here asks which family a model is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ACTIVE_UNIT_THRESHOLD = 0.01  # as aevb.evaluate: Var_x E_q[z_u|x] above this
COLLAPSED_NATS = 0.01  # a layer whose mean KL is below this passes (almost) nothing: collapsed


def has_layers(model) -> bool:
    """Whether the model reports per-layer terms."""
    return callable(getattr(model, "kl_per_layer", None)) and hasattr(model, "latent_layer_sizes")


@torch.no_grad()
def layer_statistics(model, x: Tensor, batch_size: int = 500, seed: int = 0, y: Tensor | None = None,
                     threshold: float = ACTIVE_UNIT_THRESHOLD) -> dict[str, Any]:
    """Per layer (top first): ``kl_per_layer`` (mean over x of the layer's KL at one seeded posterior draw, nats),
    ``active_units_per_layer`` (of its code dimensions, Var_x of the code above ``threshold``),
    ``latent_layer_sizes``, and ``collapsed_layers`` (indices of layers whose KL is below COLLAPSED_NATS)."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    kl_sum, codes = None, []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(model.device)
        yb = None if y is None else y[start : start + batch_size].to(model.device)
        kl = model.kl_per_layer(xb, yb, generator=gen).double().sum(0)  # (L,)
        kl_sum = kl if kl_sum is None else kl_sum + kl
        codes.append(model.embed(xb, yb).double())
    z = torch.cat(codes)
    var = z.var(0, unbiased=True) if len(z) > 1 else torch.zeros(z.shape[1], dtype=torch.float64)
    sizes = list(model.latent_layer_sizes)
    active = [int((v > threshold).sum()) for v in var.split(sizes)]
    kls = (kl_sum / len(x)).tolist()
    return {"kl_per_layer": kls, "active_units_per_layer": active, "latent_layer_sizes": sizes,
            "collapsed_layers": [i for i, v in enumerate(kls) if v < COLLAPSED_NATS]}


def layers_html(evaluation: dict[str, Any]) -> str:
    """The report's table of the layers (from evaluation.json), top first; empty without per-layer terms."""
    kls = evaluation.get("kl_per_layer")
    if not isinstance(kls, list) or not kls:
        return ""
    active = evaluation.get("active_units_per_layer") or [None] * len(kls)
    sizes = evaluation.get("latent_layer_sizes") or [None] * len(kls)
    rows = []
    for i, (kl, a, n) in enumerate(zip(kls, active, sizes)):
        state = "collapsed" if kl < COLLAPSED_NATS else "in use"
        rows.append(f"<tr><th>{i}{' (top)' if i == 0 else ''}</th><td class=num>{n}</td><td class=num>{kl:.3f}</td>"
                    f"<td class=num>{a}</td><td{' class=note' if kl < COLLAPSED_NATS else ''}>{state}</td></tr>")
    head = ("<tr><th>layer</th><th>code dimensions</th><th>KL (nats per example)</th><th>active units</th>"
            "<th>state</th></tr>")
    return ("<h3>Latent layers</h3><p>Each layer's share of the KL term and its active units (posterior-mean "
            f"variance over images above {ACTIVE_UNIT_THRESHOLD:g}); a layer below {COLLAPSED_NATS:g} nat has "
            "collapsed to its prior.</p><table>" + head + "".join(rows) + "</table>")


@torch.no_grad()
def plot_layer_reconstructions(model, x: Tensor, path: str | Path, temperature: float = 1.0, seed: int = 0) -> Path:
    """A PNG: the images x (top row), then one row per n = L, L-1, ..., 0: x's code with its top n layers kept
    and the rest drawn from the prior at ``temperature``; n = L is the reconstruction, n = 0 a sample."""
    import matplotlib.pyplot as plt

    from .viz import image_grid, save_figure

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
