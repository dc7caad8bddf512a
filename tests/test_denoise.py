"""Denoising models: the corruptions, the objectives' clean target, the trainer's draw (resumed bit for
bit), and ``aevb denoise``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from aevb.config import ConfigError, ModelConfig, RunConfig, TrainConfig, parse_input_noise
from aevb.corruption import corrupt, denoise, psnr
from aevb.data import load_dataset
from aevb.images import read_image, write_image
from aevb.models import AE, VAE
from aevb.objectives import ae_loss, elbo, iwae_bound
from aevb.runconfig import apply_overrides, default_config
from aevb.train import Trainer, binarize_draw

from .conftest import run_cli
from .vizmodels import aevb as aevb_cli
from .vizmodels import digits_run

# --- the corruptions ------------------------------------------------------------------------


@pytest.mark.parametrize("spec,want", [("gaussian:0.5", ("gaussian", 0.5)), ("mask:0.25", ("mask", 0.25)),
                                       ("salt-pepper:0.1", ("salt-pepper", 0.1))])
def test_parse_input_noise(spec, want):
    assert parse_input_noise(spec) == want


@pytest.mark.parametrize("spec,message", [("blur:1", "must be gaussian:SIGMA"), ("gaussian", "must be gaussian"),
                                          ("gaussian:x", "must be gaussian"), ("gaussian:0", "SIGMA > 0"),
                                          ("gaussian:inf", "SIGMA > 0"), ("mask:1", "0 < P < 1"),
                                          ("salt-pepper:-0.1", "0 < P < 1"), ("mask:nan", "must be gaussian")])
def test_bad_input_noise_names_the_setting(spec, message):
    with pytest.raises(ConfigError, match=message) as e:
        TrainConfig(input_noise=spec)
    assert "input_noise" in str(e.value)


def test_wake_sleep_refuses_input_noise():
    with pytest.raises(ConfigError, match="wake-sleep does not take it"):
        TrainConfig(input_noise="mask:0.5", algorithm="wake-sleep")


def test_mask_zeroes_a_fraction_p_and_keeps_the_rest():
    x = torch.full((200, 1, 10, 10), 0.7)
    out = corrupt(x, "mask:0.3", torch.Generator().manual_seed(0))
    zero = out == 0
    assert zero.float().mean().item() == pytest.approx(0.3, abs=0.01)  # 20,000 pixels: sd 0.003
    assert torch.equal(out[~zero], x[~zero]) and torch.equal(x, torch.full_like(x, 0.7))  # x untouched


def test_salt_and_pepper_halves():
    x = torch.full((200, 1, 10, 10), 0.5)
    out = corrupt(x, "salt-pepper:0.4", torch.Generator().manual_seed(0))
    assert (out == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert (out == 1).float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert (out == 0.5).float().mean().item() == pytest.approx(0.6, abs=0.01)


def test_gaussian_has_its_standard_deviation_and_stays_in_range():
    x = torch.full((100, 1, 10, 10), 0.5)
    out = corrupt(x, "gaussian:0.1", torch.Generator().manual_seed(0))  # 5 sigma from either edge: no clipping
    assert (out - x).std().item() == pytest.approx(0.1, rel=0.03)
    wide = corrupt(x, "gaussian:2", torch.Generator().manual_seed(0))
    assert wide.min().item() == 0 and wide.max().item() == 1


def test_the_same_generator_state_gives_the_same_corruption():
    x = torch.rand(8, 1, 4, 4)
    a = corrupt(x, "mask:0.5", torch.Generator().manual_seed(3))
    b = corrupt(x, "mask:0.5", torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, corrupt(x, "mask:0.5", torch.Generator().manual_seed(4)))


def test_psnr_closed_form():
    ref = torch.zeros(3, 1, 4, 4)
    x = torch.full_like(ref, 0.1)  # MSE 0.01 -> 20 dB
    x[1] = 0.5  # MSE 0.25 -> 10 log10(4) = 6.0206 dB
    got = psnr(x, ref)
    assert got[0].item() == pytest.approx(20.0, abs=1e-4) and got[1].item() == pytest.approx(10 * math.log10(4), abs=1e-4)
    assert psnr(ref, ref)[0].item() == math.inf


# --- the objectives score the clean x from the corrupted input -----------------------------------


def _vae():
    torch.manual_seed(0)
    return VAE(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=3)).double()


def test_elbo_encodes_x_in_and_scores_x():
    m = _vae()
    x = torch.rand(16, 1, 4, 4, dtype=torch.float64).round()
    x_in = corrupt(x, "mask:0.5", torch.Generator().manual_seed(0))
    got = elbo(m, x, x_in=x_in, generator=torch.Generator().manual_seed(1), reduction="none")
    q = m.encode(x_in)
    z = q.rsample(1, generator=torch.Generator().manual_seed(1))  # the same epsilon
    want_rec = m.decode(z).log_prob(x).mean(0)
    want_kl = -0.5 * (1 + q.log_var - q.mu**2 - q.log_var.exp()).sum(-1)  # appendix B
    assert torch.allclose(got["reconstruction"], want_rec, atol=1e-12)
    assert torch.allclose(got["kl"], want_kl, atol=1e-12)
    same = elbo(m, x, x_in=x, generator=torch.Generator().manual_seed(1))
    plain = elbo(m, x, generator=torch.Generator().manual_seed(1))
    assert same["elbo"].item() == plain["elbo"].item()
    assert got["elbo"].mean().item() != plain["elbo"].item()


def test_iwae_and_ae_loss_take_x_in():
    m = _vae()
    x = torch.rand(8, 1, 4, 4, dtype=torch.float64).round()
    x_in = torch.zeros_like(x)
    a = iwae_bound(m, x, k=1, x_in=x_in, generator=torch.Generator().manual_seed(2))
    b = elbo(m, x, x_in=x_in, kl="mc", generator=torch.Generator().manual_seed(2))
    assert a["iwae"].item() == pytest.approx(b["elbo"].item(), rel=1e-12)  # k = 1: the ELBO
    torch.manual_seed(0)
    ae = AE(ModelConfig(input_shape=(1, 4, 4), hidden=(8,), latent_dim=3, family="ae")).double()
    got = ae_loss(ae, x, x_in=x_in, reduction="none")["reconstruction"]
    assert torch.allclose(got, ae.decode(ae.embed(x_in)).log_prob(x), atol=1e-12)


# --- the trainer ----------------------------------------------------------------------------


def _config(**kw) -> RunConfig:
    return apply_overrides(default_config("digits"), {"hidden": (32,), "latent_dim": 4, "batch_size": 50,
                                                      "epochs": 2, "input_noise": "salt-pepper:0.3", **kw})


def test_the_encoder_reads_the_corrupted_batch_and_the_likelihood_the_clean_one(tmp_path):
    cfg = _config(binarize="dynamic")
    data = load_dataset(cfg.data)
    t = Trainer(cfg, tmp_path / "r", dataset=data, progress=False)
    idx = torch.arange(50)
    g = torch.Generator().manual_seed(0).set_state(t.noise.get_state())  # the trainer's noise, replayed
    x, x_in = t._batches(idx)
    clean = binarize_draw(data.train.x[:50], g)  # the batch's binarization first, then its corruption
    assert torch.equal(x, clean)  # the target
    assert torch.equal(x_in, corrupt(clean, "salt-pepper:0.3", g))
    seen = {}
    objective = t.step_module.objective
    t.step_module.objective = lambda model, x, **kw: seen.update(x=x, x_in=kw["x_in"]) or objective(model, x, **kw)
    t.step(x, None, x_in)
    assert torch.equal(seen["x"], x) and torch.equal(seen["x_in"], x_in)
    assert t._batch(idx).shape == x.shape  # _batch: the target alone, as before


def test_denoising_run_resumes_bit_identical_and_saves_its_noise(tmp_path):
    data = load_dataset(_config().data)
    cfg = _config(binarize="dynamic")  # binarization and corruption share the generator
    full = Trainer(cfg, tmp_path / "full", dataset=data, progress=False)
    full.run()
    Trainer(cfg, tmp_path / "cut", dataset=data, progress=False).run(stop_after_steps=37)
    resumed = Trainer(cfg, tmp_path / "cut", dataset=data, progress=False)
    resumed.restore()
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = json.loads((tmp_path / "full/config.json").read_text())
    assert saved["train"]["input_noise"] == "salt-pepper:0.3"
    assert RunConfig.from_json((tmp_path / "full/config.json").read_text()) == cfg


# --- aevb denoise ---------------------------------------------------------------------------


def test_denoise_writes_the_decoded_code_of_each_image(tmp_path, capsys):
    run = digits_run(2)
    x = run.dataset().test.x[:2]
    paths = [write_image(x[i], tmp_path / f"in{i}.png") for i in range(2)]
    rc, out, err = aevb_cli(capsys, "denoise", run.dir, *paths, "--out", tmp_path / "clean")
    assert rc == 0, err
    for i, p in enumerate(paths):
        got = np.asarray(Image.open(tmp_path / "clean" / f"in{i}-denoised.png"), dtype=np.float32) / 255
        want = denoise(run.model, read_image(p, (1, 8, 8)).unsqueeze(0))[0, 0].numpy()
        assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    assert f"wrote {tmp_path / 'clean' / 'in1-denoised.png'}" in out


def test_denoise_test_figure_reports_psnr(tmp_path, capsys):
    run = digits_run(2)
    rc, out, err = aevb_cli(capsys, "denoise", run.dir, "--test", "4", "--noise", "mask:0.5", "--out",
                            tmp_path / "fig.png")
    assert rc == 0, err
    scores = json.loads(out.splitlines()[0])
    clean = run.dataset().test.x[:4]
    noisy = corrupt(clean, "mask:0.5", torch.Generator().manual_seed(0))
    assert scores["psnr_noisy_db"] == pytest.approx(psnr(noisy, clean).mean().item(), abs=1e-3)
    assert scores["psnr_denoised_db"] == pytest.approx(psnr(denoise(run.model, noisy), clean).mean().item(), abs=1e-3)
    assert Image.open(tmp_path / "fig.png").size[0] > 300


def test_denoise_errors_are_one_line(tmp_path, capsys):
    run = digits_run(2)
    rc, _, err = aevb_cli(capsys, "denoise", run.dir)  # trained without input noise, no --noise
    assert rc == 1 and "--noise gaussian:0.5" in err and err.count("\n") == 1
    rc, _, err = aevb_cli(capsys, "denoise", run.dir, "--test", "3", "--noise", "blur:2")
    assert rc == 2 and "--noise" in err and err.count("\n") == 1
    rc, _, err = aevb_cli(capsys, "denoise", run.dir, tmp_path / "missing.png")
    assert rc == 1 and "no such image file" in err
    rc, _, err = aevb_cli(capsys, "train", "--input-noise", "mask:2", "--out", tmp_path / "r")
    assert rc == 2 and "0 < P < 1" in err


@pytest.mark.slow
def test_train_input_noise_end_to_end(tmp_path):
    out = tmp_path / "dvae"
    run_cli("train", "--dataset", "digits", "--epochs", "2", "--input-noise", "gaussian:0.3", "--out", str(out),
            "--no-progress", "--no-figures")
    assert json.loads((out / "config.json").read_text())["train"]["input_noise"] == "gaussian:0.3"
    proc = run_cli("denoise", str(out), "--test", "3", "--out", str(tmp_path / "f.png"))
    assert json.loads(proc.stdout.splitlines()[0])["noise"] == "gaussian:0.3"  # the run's own noise
