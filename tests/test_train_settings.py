"""Training settings that must take effect: the binarization a Bernoulli decoder gets, weight decay,
the initialisation's std, and a new data order every epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aevb.config import ModelConfig, RunConfig
from aevb.data import load_dataset
from aevb.runconfig import apply_overrides, default_config, plan_run
from aevb.train import Trainer, make_optimizer


# --- the binarization of grey levels under a Bernoulli decoder ------------------------------------


def test_grey_levels_under_a_bernoulli_decoder_default_to_dynamic_binarization(tmp_path):
    plan = plan_run(out=tmp_path / "a", overrides={"dataset": "digits"})
    assert plan.config.model.likelihood == "bernoulli" and plan.config.data.binarize == "dynamic"
    assert set(torch.unique(plan.data.test.x).tolist()) == {0.0, 1.0}  # scored on binary draws
    assert torch.equal(plan.data.test.x, load_dataset(plan.config.data).test.x)  # as the run directory says
    assert plan_run(out=tmp_path / "b", overrides={"dataset": "digits", "likelihood": "gaussian"}
                    ).config.data.binarize == "none"  # other likelihoods keep the grey levels
    assert plan_run(out=tmp_path / "c", overrides={"dataset": "digits", "binarize": "static"}
                    ).config.data.binarize == "static"
    assert default_config("digits").data.binarize == "dynamic"
    assert default_config("frey_face").data.binarize == "none"


def test_binary_data_is_not_binarized_again(tmp_path):
    x = (np.random.default_rng(0).random((40, 3, 4)) > 0.5).astype(np.float32)
    np.save(tmp_path / "b.npy", x)
    plan = plan_run(out=tmp_path / "r", overrides={"dataset": f"npy:{tmp_path / 'b.npy'}"})
    assert plan.config.data.binarize == "none" and plan.data.binary


def test_a_bernoulli_decoder_on_grey_levels_without_binarization_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Bernoulli decoder on digits's grey levels with binarize none"):
        cfg = RunConfig(model=ModelConfig(input_shape=(1, 8, 8)))  # RunConfig's data: digits, binarize none
        Trainer(cfg, tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="set binarize to dynamic"):
        plan = plan_run(out=tmp_path / "p", overrides={"dataset": "digits", "binarize": "none"})
        Trainer(plan.config, plan.out, dataset=plan.data, progress=False)
    grey = load_dataset(default_config("digits").data)  # its training split keeps the grey levels
    with pytest.raises(ValueError, match="grey levels with binarize static"):  # static data would be thresholded
        Trainer(apply_overrides(default_config("digits"), {"binarize": "static"}), tmp_path / "s", dataset=grey,
                progress=False)
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()
    cfg = apply_overrides(default_config("digits"), {"binarize": "none", "likelihood": "gaussian"})
    Trainer(cfg, tmp_path / "g", progress=False)  # a density of grey levels is fine


# --- settings the optimisation must honour -------------------------------------------------------


@pytest.mark.parametrize("optimizer,expected", [("sgd", 1 - 0.1 * 0.5), ("adam", 1 - 0.1), ("adagrad", 1 - 0.1)])
def test_weight_decay_reaches_the_optimizer(optimizer, expected):
    """A zero gradient: only the decay term wd * p moves p = 1. SGD steps by lr * wd; Adam and
    Adagrad normalise their first step to lr (up to eps)."""
    cfg = apply_overrides(default_config("digits"), {"optimizer": optimizer, "lr": 0.1, "weight_decay": 0.5})
    p = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer(cfg, [p])
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), expected), atol=1e-6, rtol=0)
    q = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer(apply_overrides(cfg, {"weight_decay": 0.0}), [q])
    q.grad = torch.zeros(3)
    opt.step()
    assert torch.equal(q.detach(), torch.ones(3))  # no decay, no gradient: no move


@pytest.mark.parametrize("std", [0.01, 0.1])
def test_init_std_sets_every_weight_and_bias(tmp_path, std):
    cfg = apply_overrides(default_config("digits"), {"hidden": (200,), "latent_dim": 4, "init_std": std})
    model = Trainer(cfg, tmp_path / "r", progress=False).model
    for name, p in model.named_parameters():
        if p.numel() >= 200:  # enough values for the sample std to be within 15%
            assert abs(p.std().item() / std - 1) < 0.15, (name, p.std().item())
            assert abs(p.mean().item()) < 0.3 * std, name


def test_every_epoch_visits_the_training_split_in_a_new_order(tmp_path, monkeypatch):
    cfg = apply_overrides(default_config("digits"), {"hidden": (8,), "latent_dim": 2, "batch_size": 100, "epochs": 3})
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    seen: list[torch.Tensor] = []
    batches = trainer._batches  # every training batch is drawn through it
    monkeypatch.setattr(trainer, "_batches", lambda idx: (seen.append(idx.clone()), batches(idx))[1])
    trainer.run()
    steps = trainer.steps_per_epoch  # 12 of 100 from the 1297 training digits
    orders = [torch.cat(seen[e * steps : (e + 1) * steps]) for e in range(3)]
    for order in orders:
        assert len(set(order.tolist())) == steps * 100  # a permutation: no example twice in an epoch
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert (orders[a] != orders[b]).float().mean() > 0.9, (a, b)  # reshuffled, not the same order
