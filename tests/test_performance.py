"""The fast paths keep their meaning: no host synchronisation inside a step, torch.compile and
the presets give the same objective as the eager float32 path."""

from __future__ import annotations

import pytest
import torch

from aevb.config import PRESETS
from aevb.train import Trainer, binarize_draw
from aevb.runconfig import apply_overrides, default_config

from .conftest import run_cli


def cfg(**kw):
    return apply_overrides(default_config("digits"), {"hidden": (32,), "latent_dim": 4, "batch_size": 50, **kw})


@pytest.mark.parametrize("optimizer", ["adam", "adagrad", "sgd"])
def test_a_step_never_waits_for_the_device(tmp_path, monkeypatch, optimizer):
    """Reading a tensor's value on the host (.item(), float(), int(), bool()) is what makes a
    step wait for an accelerator; the step must not do it, skip decision included."""
    t = Trainer(cfg(optimizer=optimizer), tmp_path / "r", progress=False)
    assert t.device_guard  # the fused kernels take the skip decision as a tensor
    x = t.data.train.x[:50]
    t.step(x)  # warm-up outside the patch

    def forbidden(*args, **kw):
        raise AssertionError("a host synchronisation inside the training step")

    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for _ in range(3):
        terms, bad = t.step(x)
        t._accumulate(terms, bad)
    monkeypatch.undo()
    assert int(t.guard.skipped) == 0 and t.sums["_steps"].item() == 3


def test_a_skipped_step_leaves_weights_and_optimizer_state_alone(tmp_path):
    t = Trainer(cfg(optimizer="adam"), tmp_path / "r", progress=False)
    x = t.data.train.x[:50]
    t.step(x)
    weights = [p.detach().clone() for p in t.model.parameters()]
    moments = [s["exp_avg"].clone() for s in t.optimizer.state.values()]
    steps = [s["step"].clone() for s in t.optimizer.state.values()]
    poisoned = x.clone()
    poisoned[0] = float("nan")
    terms, bad = t.step(poisoned)
    assert bool(bad) and int(t.guard.skipped) == 1 and int(t.guard.consecutive) == 1
    assert all(torch.equal(a, b) for a, b in zip(weights, t.model.parameters()))
    assert all(torch.equal(a, s["step"]) for a, s in zip(steps, t.optimizer.state.values()))
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, t.optimizer.state.values()))
    t._accumulate(terms, bad)
    assert t.sums["_steps"].item() == 0 and torch.isfinite(t.sums["elbo"])  # the NaN is not averaged in
    t.step(x)
    assert int(t.guard.consecutive) == 0 and int(t.guard.skipped) == 1


@pytest.mark.slow
def test_compiled_training_matches_the_eager_float32_path(tmp_path):
    """torch.compile changes the speed, not the numbers: same weights after two epochs, same metrics."""
    runs = {}
    for compiled in (False, True):
        t = Trainer(cfg(epochs=2, compile=compiled), tmp_path / str(compiled), progress=False)
        runs[compiled] = (t.run(), torch.nn.utils.parameters_to_vector(t.model.parameters()).detach())
    (eager_lines, eager_w), (comp_lines, comp_w) = runs[False], runs[True]
    assert torch.allclose(eager_w, comp_w, atol=1e-4, rtol=0)
    for a, b in zip(eager_lines, comp_lines):
        assert a["valid_elbo"] == pytest.approx(b["valid_elbo"], abs=1e-3)
        assert a["train_elbo"] == pytest.approx(b["train_elbo"], abs=1e-3)
    assert comp_lines[0]["compile_seconds"] > 0 and "compile_seconds" not in comp_lines[1]
    assert "compile_seconds" not in eager_lines[0]


def test_the_fast_preset_sets_its_values_and_flags_override_it(tmp_path):
    out = tmp_path / "run"
    run_cli("train", "--dataset", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
            "--preset", "fast", "--batch-size", "100", "--no-progress", "--no-figures", "--out", str(out))
    import json

    train = json.loads((out / "config.json").read_text())["train"]
    fast = PRESETS["fast"]
    assert train["batch_size"] == 100  # the explicit flag wins
    assert {k: train[k] for k in fast if k != "batch_size"} == {k: v for k, v in fast.items() if k != "batch_size"}


def test_dynamic_binarization_draws_bernoulli_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2000, 50, generator=g)
    x[:, 0], x[:, 1] = 0.0, 1.0
    draws = torch.stack([binarize_draw(x, g) for _ in range(40)])  # 40 draws of each pixel
    assert set(draws.unique().tolist()) == {0.0, 1.0} and draws.dtype == x.dtype
    assert draws[..., 0].max() == 0 and draws[..., 1].min() == 1  # p = 0 and p = 1 are exact
    # the mean of 80,000 draws of Bernoulli(p) per column is within 5 standard errors of p
    p = x[0]
    x_same = x[:1].expand(2000, -1)
    mean = torch.stack([binarize_draw(x_same, g) for _ in range(40)]).mean(dim=(0, 1))
    se = (p * (1 - p) / 80_000).sqrt()
    assert ((mean - p).abs() <= 5 * se + 1e-7).all()
    again = binarize_draw(x, torch.Generator().manual_seed(1))
    assert torch.equal(again, binarize_draw(x, torch.Generator().manual_seed(1)))  # seeded: reproducible
