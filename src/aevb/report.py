"""Figures of a run, and one self-contained HTML page with all of them.

``write_figures`` draws every kind of plot a run supports into RUN_DIR/figures;
``write_report`` embeds them (base64 PNG), the configuration and the metrics in
RUN_DIR/report.html, a page that needs no other file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from . import viz
from .checkpoint import Run

KINDS = ("samples", "reconstructions", "manifold", "scatter", "interpolate", "traverse", "curves")


def plot(run: Run, kind: str, path: str | Path, data=None, dims: tuple[int, int] = (0, 1)) -> Path:
    """Draw one kind of figure for a loaded run."""
    model = run.model
    device = next(model.parameters()).device
    if kind == "samples":
        return viz.plot_samples(model, path)
    if kind == "curves":
        return viz.plot_curves(run.metrics, path)
    if kind == "manifold":
        if model.latent_dim < 2:
            raise ValueError("the manifold plot needs a latent of at least 2 dimensions")
        return viz.plot_manifold(model, path, dims=dims)
    data = data if data is not None else run.dataset()
    test = data.test
    x = test.x.to(device)
    if kind == "reconstructions":
        return viz.plot_reconstructions(model, x[:16], path)
    if kind == "scatter":
        return viz.plot_scatter(model, x, test.y, path)
    if kind == "interpolate":
        return viz.plot_interpolation(model, x[0], x[1], path)
    if kind == "traverse":
        return viz.plot_traversal(model, x[0], path)
    raise ValueError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")


def write_figures(run: Run, folder: str | Path | None = None) -> dict[str, Path]:
    folder = Path(folder or run.dir / "figures")
    data = run.dataset()
    out = {}
    for kind in KINDS:
        if kind == "manifold" and run.model.latent_dim < 2:
            continue
        if kind == "curves" and not run.metrics:
            continue
        out[kind] = plot(run, kind, folder / f"{kind}.png", data=data)
    return out


CAPTIONS = {
    "samples": "Samples from the prior: decoded means of z ~ N(0, I).",
    "reconstructions": "Test inputs (top) and their reconstructions at the posterior mean (bottom).",
    "manifold": "The learned manifold: decoded means over a grid of Gaussian quantiles of two latent dimensions.",
    "scatter": "Posterior means of test images, coloured by label.",
    "interpolate": "Interpolation between two test images in latent space.",
    "traverse": "Each latent dimension swept with the others fixed.",
    "curves": "Training and validation terms per epoch (nats per example).",
}


def write_report(run: Run, path: str | Path | None = None) -> Path:
    """RUN_DIR/report.html: configuration, last metrics, every figure embedded."""
    figures = write_figures(run)
    path = Path(path or run.dir / "report.html")
    metrics = run.metrics
    last = metrics[-1] if metrics else {}
    cfg = run.config
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4f}</td></tr>" if isinstance(v, float)
                   else f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in last.items())
    figs = []
    for kind, fig in figures.items():
        data = base64.b64encode(fig.read_bytes()).decode()
        figs.append(f'<figure id="{kind}"><img alt="{kind}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(CAPTIONS[kind])}</figcaption></figure>")
    title = f"aevb run: {cfg.model.kind.upper()} on {cfg.data.dataset}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }} th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Run directory: <code>{html.escape(str(run.dir))}</code>. {len(metrics)} epochs. Values in nats per example.</p>
<h2>Metrics of the last epoch</h2><table>{rows}</table>
<h2>Figures</h2>{''.join(figs)}
<h2>Configuration</h2><pre>{html.escape(json.dumps(cfg.to_dict(), indent=2))}</pre>
</body></html>
"""
    from .checkpoint import atomic_write

    atomic_write(path, page.encode())
    return path

