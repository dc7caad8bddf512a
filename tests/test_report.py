"""`aevb report`: one self-contained HTML page with the configuration, metrics and every figure."""

from __future__ import annotations

import base64
import re

from aevb.report import write_report
from aevb.viz import PLOT_KINDS

from .vizmodels import aevb, digits_run


def embedded_pngs(html: str) -> dict[str, bytes]:
    found = re.findall(r'<figure id="fig-(\w+)"><img alt="\w+" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return {kind: base64.b64decode(b64) for kind, b64 in found}


def test_report_embeds_every_figure(tmp_path):
    run = digits_run(2)
    path = write_report(run, tmp_path / "r.html")
    html = path.read_text()
    figs = embedded_pngs(html)
    assert sorted(figs) == sorted(PLOT_KINDS)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000 for png in figs.values())
    assert "not drawn" not in html
    # configuration and final metrics are on the page
    assert "model.latent_dim</th><td>2<" in html
    last = run.metrics[-1]
    assert f"{last['valid_elbo']:.4f}" in html
    # self-contained: no external references
    assert not re.search(r'(src|href)="(?!data:)', html)


def test_report_notes_missing_figures(tmp_path):
    run = digits_run(10)
    (tmp_path / "run").mkdir()
    for name in ("config.json", "model.safetensors"):  # a run without metrics.jsonl
        (tmp_path / "run" / name).write_bytes((run.dir / name).read_bytes())
    from aevb.run import load

    html = write_report(load(tmp_path / "run")).read_text()
    assert "no metrics.jsonl" in html
    assert "curves</b>: <span class=\"note\">not drawn: no training metrics" in html
    assert len(embedded_pngs(html)) == len(PLOT_KINDS) - 1


def test_report_command(tmp_path, capsys):
    rc, out, _ = aevb(capsys, "report", digits_run(2).dir, "--out", tmp_path / "x.html")
    assert rc == 0 and out.strip() == f"wrote {tmp_path / 'x.html'}"
    assert len(embedded_pngs((tmp_path / "x.html").read_text())) == len(PLOT_KINDS)


def test_train_writes_report(tmp_path, capsys):
    rc, out, _ = aevb(capsys, "train", "--dataset", "digits", "--epochs", "2", "--latent-dim", "2", "--hidden", "16",
                      "--out", tmp_path / "r", "--no-progress")
    assert rc == 0 and "report.html" in out
    assert len(embedded_pngs((tmp_path / "r" / "report.html").read_text())) == len(PLOT_KINDS)


def test_report_is_readable_by_others(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = write_report(digits_run(2), tmp_path / "r.html")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_report_shows_the_latest_evaluation_and_the_best_epoch(tmp_path, capsys):
    from aevb.run import load

    from .test_cli import copied_run

    src = digits_run(2)
    run_dir = copied_run(src.dir, tmp_path / "r")
    html = write_report(load(run_dir)).read_text()
    assert "not evaluated yet: run <code>aevb evaluate" in html and "Best epoch" not in html
    rc, _, err = aevb(capsys, "evaluate", run_dir, "--k", "9", "--n", "40", "--seed", "2", "--no-probe")
    assert rc == 0, err
    (run_dir / "best.safetensors").write_bytes((src.dir / "best.safetensors").read_bytes())
    run = load(run_dir)
    html = write_report(run).read_text()
    ev = run.evaluation
    assert "<h2>Evaluation</h2><p>The test split, 40 images; log p(x) with k = 9 importance samples per image; " \
           "seed 2; binarization: dynamic" in html.replace("\n", "")
    assert f"<tr><th>log_likelihood</th><td class=num>{ev['log_likelihood']:.4f}</td></tr>" in html
    assert "<tr><th>kl_per_dim</th><td class=num>" + " ".join(f"{v:.4f}" for v in ev["kl_per_dim"]) in html
    best = run.best
    assert f"Best epoch: {best['epoch']} (valid_elbo {best['score']:.4f})" in html


def test_report_says_when_a_conditional_models_samples_barely_depend_on_z(tmp_path):
    import torch

    from aevb.report import LOW_KL_NATS, model_kl, z_share

    run = digits_run(2, conditional=True)
    kl, source = model_kl(run)
    assert kl == run.metrics[-1]["valid_kl"] and source == f"valid split, epoch {run.metrics[-1]['epoch']}"
    assert kl < LOW_KL_NATS  # 25 epochs on 8x8 digits: z passes little beyond the label
    html = write_report(run, tmp_path / "c.html").read_text()
    assert '<p class="note" id="z-warning">The samples barely depend on z: ' \
           f"KL(q(z|x,y) || p(z)) = {kl:.3f} nats per example" in html
    assert "z-warning" not in write_report(digits_run(2), tmp_path / "u.html").read_text()  # unconditional
    # z_share: 0 for a decoder that ignores z, the share of the variance over labels and z otherwise
    model = run.model
    assert 0 < z_share(model) < 1
    with torch.no_grad():
        first = model.decoder.trunk[0].weight
        saved = first.clone()
        first[:, : model.latent_dim] = 0  # the decoder reads (z, one-hot y): z's columns first
        try:
            assert z_share(model) == 0.0
        finally:
            first.copy_(saved)


def test_report_shows_sample_quality_beside_reconstruction_quality():
    from types import SimpleNamespace

    from aevb.report import _evaluation_section

    ev = {"split": "test", "n": 100, "k": 0, "seed": 0, "binarization": "dynamic", "written": "now", "elbo": -90.0,
          "fd": 12.5, "precision": 0.5, "recall": 0.25, "density": 0.75, "coverage": 0.125,
          "reconstruction_fd": 2.5, "reconstruction_precision": 0.9, "reconstruction_recall": 0.8,
          "reconstruction_density": 1.1, "reconstruction_coverage": 0.7,
          "sample_quality_protocol": {"n_real": 100, "n_samples": 100, "k": 5, "samples": "decoder means",
                                      "real_images": "grey", "features": "the 128 penultimate ReLU units",
                                      "feature_net": {"version": 1, "test_accuracy": 0.985}}}
    html = _evaluation_section(SimpleNamespace(evaluation=ev, dir="r"))
    assert "<tr><th>fd</th><td class=num>12.5000</td><td class=num>2.5000</td></tr>" in html
    assert "<tr><th>coverage</th><td class=num>0.1250</td><td class=num>0.7000</td></tr>" in html
    assert "test accuracy 0.9850" in html and "not comparable with the Inception-FID" in html
    assert "<tr><th>elbo</th>" in html and "<tr><th>reconstruction_fd</th>" not in html  # not twice
    gone = _evaluation_section(SimpleNamespace(evaluation={"sample_quality_unavailable": "no labels"}, dir="r"))
    assert '<h3>Sample quality</h3><p class="note">no labels</p>' in gone
