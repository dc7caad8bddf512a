"""What a model with several latent layers reports about each of them: evaluation terms and the report's table
(the figure of what each layer encodes is ``aevb.viz.plot_layer_reconstructions``).

A model takes part by having ``kl_per_layer(x, y, generator)`` -> (B, L), the closed-form KL of each layer
at a draw of z ~ q(z|x) (the ELBO's KL is their sum), and ``latent_layer_sizes`` (the code's dimensions of
each layer, top first, the code being their concatenation); ``reconstruct_keeping(x, keep, generator,
temperature)`` adds the figure. Nothing here asks which family a model is.
"""

from __future__ import annotations

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
