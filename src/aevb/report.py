"""One self-contained HTML page per run: configuration, metrics and every figure.

    aevb report runs/mnist            # writes runs/mnist/report.html

Figures are PNGs embedded as base64 ``data:`` URIs, so the page can be mailed or moved
on its own. A figure that cannot be drawn for this run (no metrics yet, a 1-D latent for
the manifold) is replaced by a one-line note saying why; the page is still written.
The latest ``aevb evaluate`` (evaluation.json) has its own section, its sample quality
(``aevb evaluate --sample-quality``) a table of its own, and its disentanglement scores
(``--disentanglement``) another, with the factor traversal figure; a conditional model whose
samples barely depend on z (a small KL(q(z|x,y) || p(z))) is flagged, with its KL.
"""

from __future__ import annotations

import base64
import html
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_write
from .hierarchy import has_layers, layers_html
from .viz import PLOT_KINDS, make_plot, plot_layer_reconstructions

# A conditional model whose KL(q(z|x,y) || p(z)) is below this (nats per example) passes less than about
# 1.4 bits through z: its samples for a label all look alike, whatever z is drawn.
LOW_KL_NATS = 1.0

CAPTIONS = {
    "manifold": "Decoded means over a grid of two latent dimensions (by default the two most active, by KL) "
                "at the 5%..95% quantiles of the prior's marginals: the inverse Gaussian CDF for N(0, I) "
                "(Kingma & Welling, figure 4), empirical quantiles of prior draws for a learned prior.",
    "scatter": "Posterior means of test images, coloured by label (PCA to 2-D for larger latents).",
    "samples": "Decoded means of z drawn from the model's prior (N(0, I) unless learned).",
    "reconstructions": "Test inputs above their reconstructions at the posterior mean.",
    "interpolate": "Decoded means along the straight line between two test images' posterior means.",
    "traverse": "Each latent dimension swept over Gaussian quantiles, the others at a test image's posterior mean.",
    "curves": "Training and validation ELBO, reconstruction and KL terms per epoch (nats per example).",
    "layers": "What each latent layer encodes: test images (top row), then their codes with the top n layers kept "
              "(posterior means) and the layers below drawn from the prior at temperature 1; the first such row "
              "is the reconstruction, the last a sample.",
}

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
.note{color:#a33}pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _config_table(config) -> str:
    rows = []
    for section in ("model", "data", "train"):
        for key, value in getattr(config, section).__dict__.items():
            rows.append(f"<tr><th>{section}.{html.escape(key)}</th><td>{_fmt(value)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _metrics_table(metrics: list[dict]) -> str:
    if not metrics:
        return '<p class="note">no metrics.jsonl in the run directory</p>'
    last = metrics[-1]
    keys = [k for k in ("elbo", "reconstruction", "kl") if f"train_{k}" in last or f"valid_{k}" in last]
    head = "<tr><th>term (nats per example)</th><th>train</th><th>valid</th></tr>"
    rows = "".join(f"<tr><th>{k}</th><td class=num>{_fmt(last.get(f'train_{k}', ''))}</td>"
                   f"<td class=num>{_fmt(last.get(f'valid_{k}', ''))}</td></tr>" for k in keys)
    other = {k: v for k, v in last.items() if not k.startswith(("train_", "valid_"))}
    extra = "".join(f"<tr><th>{html.escape(k)}</th><td class=num colspan=2>{_fmt(v)}</td></tr>" for k, v in other.items())
    return f"<p>After epoch {_fmt(last.get('epoch', len(metrics)))}:</p><table>{head}{rows}{extra}</table>"


def _best_note(run) -> str:
    try:
        best = run.best
    except CheckpointError as e:
        return f'<p class="note">{html.escape(str(e))}</p>'
    if not best or not best.get("epoch"):
        return ""
    return (f"<p>Best epoch: {best['epoch']} ({html.escape(str(best['key']))} {_fmt(best['score'])}); its weights "
            'are in <code>best.safetensors</code> (<code>aevb.load(run, which="best")</code>).</p>')


def _evaluation_section(run) -> str:
    """The latest ``aevb evaluate`` of the run (evaluation.json): its settings and every metric."""
    try:
        ev = run.evaluation
    except CheckpointError as e:
        return f'<p class="note">{html.escape(str(e))}</p>'
    if not ev:
        return f'<p class="note">not evaluated yet: run <code>aevb evaluate {html.escape(str(run.dir))}</code></p>'
    settings = ("split", "n", "k", "seed", "binarization", "written")
    get = {key: _fmt(ev.get(key, "?")) for key in settings}
    head = (f"<p>The {get['split']} split, {get['n']} images; log p(x) with k = {get['k']} importance samples per "
            f"image; seed {get['seed']}; binarization: {get['binarization']}; written {get['written']}.</p>")
    rows = []
    for key, value in ev.items():
        if key not in settings and key not in QUALITY_KEYS and key not in _DISENTANGLEMENT_KEYS:
            shown = " ".join(_fmt(v) for v in value) if isinstance(value, list) else _fmt(value)
            rows.append(f"<tr><th>{html.escape(key)}</th><td class=num>{shown}</td></tr>")
    return head + "<table>" + "".join(rows) + "</table>" + _quality_section(ev) + layers_html(ev)


# aevb.quality's keys (SAMPLE_KEYS, RECONSTRUCTION_KEYS and the protocol), spelled out so that the report
# need not import it.
_QUALITY_METRICS = ("fd", "precision", "recall", "density", "coverage")
QUALITY_KEYS = (*_QUALITY_METRICS, *(f"reconstruction_{k}" for k in _QUALITY_METRICS), "sample_quality_protocol",
                "sample_quality_unavailable")


def _quality_section(ev: dict) -> str:
    """``aevb evaluate --sample-quality``'s numbers, samples and reconstructions side by side, and its protocol."""
    if "sample_quality_unavailable" in ev:
        return f'<h3>Sample quality</h3><p class="note">{html.escape(str(ev["sample_quality_unavailable"]))}</p>'
    if "fd" not in ev:
        return ""
    head = "<tr><th>against the real images</th><th>samples</th><th>reconstructions</th></tr>"
    rows = "".join(f"<tr><th>{key}</th><td class=num>{_fmt(ev.get(key, ''))}</td>"
                   f"<td class=num>{_fmt(ev.get(f'reconstruction_{key}', ''))}</td></tr>" for key in _QUALITY_METRICS)
    p = ev.get("sample_quality_protocol") or {}
    net = p.get("feature_net") or {}
    about = (f"<p>{_fmt(p.get('n_samples', '?'))} samples ({_fmt(p.get('samples', '?'))}) and reconstructions "
             f"against {_fmt(p.get('n_real', '?'))} real images ({_fmt(p.get('real_images', '?'))}); k = "
             f"{_fmt(p.get('k', '?'))} nearest neighbours. Features: {_fmt(p.get('features', '?'))}, version "
             f"{_fmt(net.get('version', '?'))}, test accuracy {_fmt(net.get('test_accuracy', '?'))}. fd is a Frechet "
             "distance in these features, <b>not comparable with the Inception-FID of papers</b>; see "
             "docs/sample-quality.md.</p>")
    return f'<h3 id="sample-quality">Sample quality</h3>{about}<table>{head}{rows}</table>'


_DISENTANGLEMENT_KEYS = ("disentanglement", "beta_vae_score", "factor_vae_score", "mig", "sap", "dci_disentanglement",
                         "dci_completeness", "dci_informativeness")


def _disentanglement_section(run) -> str:
    """The disentanglement scores of the latest evaluation, each dimension's factor and the traversal figure
    (empty when the evaluation has none)."""
    try:
        ev = run.evaluation
    except CheckpointError:
        return ""
    if not ev or "disentanglement" not in ev:
        return ""
    d = ev["disentanglement"]
    sizes = ", ".join(f"{k} {v}" for k, v in d.get("disentanglement_sizes", {}).items())
    head = (f"<p>On the ground-truth factors {html.escape(', '.join(d.get('factor_names', [])))}; seed "
            f"{_fmt(d.get('disentanglement_seed', '?'))}; sample sizes: {html.escape(sizes)} "
            "(docs/disentanglement.md).</p>")
    scores = "".join(f"<tr><th>{key}</th><td class=num>{_fmt(ev.get(key, '?'))}</td></tr>"
                     for key in _DISENTANGLEMENT_KEYS[1:])
    dims = "".join(f"<tr><th>z[{i}]</th><td>{html.escape(str(f.get('factor')))}</td><td class=num>{_fmt(f.get('share'))}"
                   "</td></tr>" for i, f in enumerate(d.get("factor_of_dim", [])))
    figure = ""
    png = run.dir / "figures" / "factor_traversal.png"
    if png.is_file():
        b64 = base64.b64encode(png.read_bytes()).decode()
        figure = ('<figure id="fig-factor-traversal"><img alt="factor traversal" src="data:image/png;base64,'
                  f'{b64}"><figcaption><b>factor traversal</b>: each latent dimension swept over Gaussian '
                  "quantiles beside the factor it shares the most information with (its share of that factor's "
                  "entropy).</figcaption></figure>")
    return (head + "<table>" + scores + "</table><p>The factor each dimension captures most (mutual information "
            "over the factor's entropy):</p><table><tr><th>dimension</th><th>factor</th><th>share</th></tr>" + dims
            + "</table>" + figure)


def model_kl(run) -> tuple[float, str] | None:
    """The run's KL(q(z|x) || p(z)) in nats per example and where it comes from: the latest evaluation,
    else the last epoch's validation (or test) KL; None when neither has one."""
    try:
        ev = run.evaluation or {}
    except CheckpointError:
        ev = {}
    if isinstance(ev.get("kl"), (int, float)):
        return float(ev["kl"]), f"evaluation.json, {ev.get('split', '?')} split"
    last = run.metrics[-1] if run.metrics else {}
    for split in ("valid", "test"):
        if isinstance(last.get(f"{split}_kl"), (int, float)):
            return float(last[f"{split}_kl"]), f"{split} split, epoch {last.get('epoch', '?')}"
    return None


@torch.no_grad()
def z_share(model, n_z: int = 16, seed: int = 0) -> float:
    """How much a conditional model's samples depend on z: decoded means for every label and ``n_z``
    prior draws (the same z for each label), the pixel variance over z within a label (averaged over
    labels and pixels) as a share of the variance over labels and z together. 0: z changes nothing."""
    k = model.config.num_classes
    g = torch.Generator(device=model.device).manual_seed(seed)
    z = model.prior.sample(n_z, generator=g, device=model.device)
    labels = torch.arange(k, device=model.device).repeat_interleave(n_z)
    means = model.decode(z.repeat(k, 1), labels).mean.reshape(k, n_z, -1).double()  # (K, n_z, D)
    total = means.reshape(k * n_z, -1).var(0, unbiased=False).mean()
    return (means.var(1, unbiased=False).mean() / total).item() if total > 0 else 0.0


def _conditional_note(run) -> str:
    """For a conditional model: its KL, and a warning when z carries so little that its samples barely
    depend on z."""
    model = run.model
    if not model.config.conditional or not model.capabilities.has_prior:
        return ""
    kl = model_kl(run)
    share = z_share(model)
    spread = f"for a fixed label, z explains {100 * share:.0f}% of the samples' pixel variance"
    if kl is None:
        return f"<p>Conditional model: {spread} (no KL recorded yet).</p>"
    value, source = kl
    kl_text = f"KL(q(z|x,y) || p(z)) = {value:.3f} nats per example ({html.escape(source)})"
    if value < LOW_KL_NATS:
        return (f'<p class="note" id="z-warning">The samples barely depend on z: {kl_text}, below '
                f"{LOW_KL_NATS:g} nat, so z passes almost nothing beyond the label and every sample of a label "
                f"looks alike ({spread}). A larger latent, more epochs, a KL warm-up or free bits may help.</p>")
    return f"<p>Conditional model: {kl_text}; {spread}.</p>"


def figures(run, data_dir: str | None = None) -> dict[str, bytes | str]:
    """Every plot kind for ``run``: PNG bytes, or a string saying why it could not be drawn."""
    out: dict[str, bytes | str] = {}
    dataset, data_error = None, None
    try:
        dataset = run.dataset(data_dir)
    except (ValueError, OSError) as e:  # DataError is a ValueError
        data_error = f"data set unavailable: {e}"
    with tempfile.TemporaryDirectory() as tmp:
        for kind in PLOT_KINDS:
            needs_data = kind in ("scatter", "reconstructions", "interpolate", "traverse")
            if needs_data and dataset is None:
                out[kind] = data_error or "data set unavailable"
                continue
            try:
                path = make_plot(run, kind, Path(tmp) / f"{kind}.png", dataset=dataset)
                out[kind] = path.read_bytes()
            except ValueError as e:
                out[kind] = str(e)
            except RuntimeError as e:  # a numerical failure (torch's LinAlgError is one): say so, draw the rest
                out[kind] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'failed'}"
    if has_layers(run.model) and callable(getattr(run.model, "reconstruct_keeping", None)) and dataset is not None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                out["layers"] = plot_layer_reconstructions(run.model, dataset.test.x[:8], Path(tmp) / "layers.png").read_bytes()
            except (ValueError, RuntimeError) as e:
                out["layers"] = str(e)
    return out


def _latent_words(model) -> str:
    """The code's size for the title: "20-D latent", or a hierarchy's layers ("40-D latent in 2 layers (20+20)")."""
    words = f"{model.capabilities.latent_dim}-D latent"
    if has_layers(model):
        sizes = list(model.latent_layer_sizes)
        words += f" in {len(sizes)} layers ({'+'.join(map(str, sizes))})"
    return words


def render(run, data_dir: str | None = None) -> str:
    """The report as an HTML string."""
    cfg = run.config
    m = cfg.model
    given = f", conditional on {m.num_classes} classes" if m.num_classes else ""
    title = (f"aevb run {run.dir.name}: {m.family.upper()} on {cfg.data.dataset}{given}, "
             f"{_latent_words(run.model)}, {m.likelihood} decoder")
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>Run directory <code>{html.escape(str(run.dir))}</code>; report written "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
             "<h2>Metrics</h2>", _metrics_table(run.metrics), _best_note(run), _conditional_note(run),
             "<h2>Evaluation</h2>", _evaluation_section(run)]
    dis = _disentanglement_section(run)
    if dis:
        parts += ["<h2>Disentanglement</h2>", dis]
    parts += ["<h2>Figures</h2>"]
    for kind, fig in figures(run, data_dir).items():
        if isinstance(fig, bytes):
            b64 = base64.b64encode(fig).decode()
            parts.append(f'<figure id="fig-{kind}"><img alt="{kind}" src="data:image/png;base64,{b64}">'
                         f"<figcaption><b>{kind}</b>: {html.escape(CAPTIONS[kind])}</figcaption></figure>")
        else:
            parts.append(f'<figure id="fig-{kind}"><figcaption><b>{kind}</b>: '
                         f'<span class="note">not drawn: {html.escape(fig)}</span></figcaption></figure>')
    parts += ["<h2>Configuration</h2>", _config_table(cfg),
              "<details><summary>config.json</summary><pre>" + html.escape(cfg.to_json()) + "</pre></details>",
              "</body></html>"]
    return "\n".join(parts)


def write_report(run, path: str | Path | None = None, data_dir: str | None = None) -> Path:
    """Write the run's HTML report (default RUN_DIR/report.html) and return its path."""
    path = Path(path) if path is not None else run.dir / "report.html"
    atomic_write(path, render(run, data_dir).encode())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # a page to share: not the 0600 of the temporary file it was renamed from
    return path


__all__ = ["CAPTIONS", "figures", "render", "write_report"]
