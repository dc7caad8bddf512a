"""Training settings that must take effect: the binarization a Bernoulli decoder gets, weight decay,
the initialisation's std, and a new data order every epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aevb.config import ModelConfig, RunConfig
from aevb.data import load_dataset
from aevb.runconfig import apply_overrides, default_config, plan_run
from aevb.train import Trainer


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
    with pytest.raises(ValueError, match="set binarize to dynamic or static"):
        plan = plan_run(out=tmp_path / "p", overrides={"dataset": "digits", "binarize": "none"})
        Trainer(plan.config, plan.out, dataset=plan.data, progress=False)
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()
    cfg = apply_overrides(default_config("digits"), {"binarize": "none", "likelihood": "gaussian"})
    Trainer(cfg, tmp_path / "g", progress=False)  # a density of grey levels is fine
