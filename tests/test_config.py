"""Configuration validation (with property-based round trips)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aevb.config import ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig


@pytest.mark.parametrize("make,match", [
    (lambda: ModelConfig(latent_dim=0), "latent_dim must be a positive integer"),
    (lambda: ModelConfig(likelihood="poisson"), "likelihood must be one of"),
    (lambda: ModelConfig(hidden=(0,)), "hidden sizes must be positive"),
    (lambda: ModelConfig(input_shape=(1, 28)), "input_shape must be three positive sizes"),
    (lambda: TrainConfig(lr=-1.0), "learning rate must be positive"),
    (lambda: TrainConfig(batch_size=0), "batch_size must be a positive integer"),
    (lambda: TrainConfig(optimizer="rmsprop"), "optimizer must be one of"),
    (lambda: TrainConfig(samples=0), r"samples \(L\) must be >= 1"),
    (lambda: DataConfig(binarize="maybe"), "binarize must be one of"),
    (lambda: ModelConfig(num_classes=-1), "num_classes must be 0 \\(unconditional\\) or a positive"),
    (lambda: ModelConfig(num_classes=2.5), "num_classes must be 0"),
    (lambda: ModelConfig(num_classes=True), "num_classes must be 0"),
])
def test_out_of_range_values_name_the_field(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_configs_written_before_conditional_models_load_as_unconditional():
    old = RunConfig().to_dict()
    del old["model"]["num_classes"]  # config.json of a run trained before the field existed
    cfg = RunConfig.from_dict(old)
    assert cfg.model.num_classes == 0 and not cfg.model.conditional


def test_unknown_fields_and_bad_json():
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        RunConfig.from_dict({"format_version": 1, "model": {"latent": 3}})
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_json("{")


@settings(max_examples=60, deadline=None)
@given(latent=st.integers(1, 512), hidden=st.lists(st.integers(1, 2048), max_size=3),
       lr=st.floats(1e-6, 10.0), batch=st.integers(1, 4096), shape=st.tuples(*[st.integers(1, 64)] * 3),
       likelihood=st.sampled_from(["bernoulli", "gaussian", "gaussian_fixed"]))
def test_round_trip(latent, hidden, lr, batch, shape, likelihood):
    cfg = RunConfig(model=ModelConfig(input_shape=shape, hidden=tuple(hidden), latent_dim=latent, likelihood=likelihood),
                    train=TrainConfig(lr=lr, batch_size=batch))
    assert RunConfig.from_json(cfg.to_json()) == cfg


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["latent_dim", "fixed_sigma", "log_var_min", "init_std"]),
                       st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=3), st.none())))
def test_model_config_either_validates_or_raises_config_error(fields):
    try:
        cfg = ModelConfig(**fields)
    except (ConfigError, TypeError):
        return
    assert cfg.latent_dim >= 1 and cfg.fixed_sigma > 0
