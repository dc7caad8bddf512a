"""Configuration validation (with property-based round trips)."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("make,match", [
    (lambda: TrainConfig(lr=float("inf")), "learning rate must be positive and finite; got inf"),
    (lambda: TrainConfig(lr=float("nan")), "learning rate must be positive and finite; got nan"),
    (lambda: TrainConfig(weight_decay=float("inf")), "weight_decay must be >= 0 and finite"),
    (lambda: TrainConfig(beta=float("inf")), "beta must be >= 0 and finite"),
    (lambda: TrainConfig(free_bits=float("nan")), "free_bits must be >= 0 and finite"),
    (lambda: TrainConfig(clip_grad_norm=float("inf")), "clip_grad_norm must be positive and finite"),
    (lambda: TrainConfig(skip_grad_norm=float("nan")), "skip_grad_norm must be positive and finite"),
    (lambda: ModelConfig(init_std=float("inf")), "init_std must be positive and finite"),
    (lambda: ModelConfig(fixed_sigma=float("inf")), "fixed_sigma must be positive and finite"),
    (lambda: ModelConfig(log_var_min=float("-inf")), "log_var_min and log_var_max must be finite"),
])
def test_non_finite_values_are_refused(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def _with(section: str, key: str, value):
    d = json.loads(RunConfig().to_json())
    d[section][key] = value
    return json.dumps(d)


@pytest.mark.parametrize("section,key,value,message", [
    ("train", "lr", "0.01", "train.lr must be a number; got the string '0.01'"),  # before: '>' not supported
    ("model", "hidden", 400, "model.hidden must be a list of integers; got the integer 400"),  # before: not iterable
    ("model", "input_shape", [1, 28], "model.input_shape must be a list of 3 integers; got the list [1, 28]"),
    ("model", "latent_dim", 2.5, "model.latent_dim must be an integer; got the number 2.5"),
    ("train", "device", 5, "train.device must be a string; got the integer 5"),  # before: accepted, read as cuda:5
    ("train", "compile", "yes", "train.compile must be true or false; got the string 'yes'"),
    ("train", "clip_grad_norm", "1", "train.clip_grad_norm must be a number or null; got the string '1'"),
    ("data", "image_size", [64], "data.image_size must be a list of 2 integers or null; got the list [64]"),
    ("model", "encoder", [1], "model.encoder must be an object or null; got the list [1]"),
    ("model", "family", 5, "model.family must be a string; got the integer 5"),
    ("train", "epochs", True, "train.epochs must be an integer; got true"),
])
def test_a_config_file_value_of_the_wrong_type_names_the_field_and_the_type(section, key, value, message):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_json(_with(section, key, value))
    assert str(e.value) == message


def test_json_numbers_fit_float_fields_and_settings_are_checked_by_type_too():
    from aevb.runconfig import apply_overrides, default_config

    assert RunConfig.from_json(_with("train", "lr", 1)).train.lr == 1  # JSON 1 is a number
    assert RunConfig.from_json(_with("model", "init_std", None)).model.init_std is None
    with pytest.raises(ConfigError, match="^train.lr must be a number; got the string '0.01'$"):
        apply_overrides(default_config(), {"lr": "0.01"})  # aevb.train(lr="0.01")
    with pytest.raises(ConfigError, match="^model.hidden must be a list of integers; got the integer 400$"):
        apply_overrides(default_config(), {"hidden": 400})
    assert apply_overrides(default_config(), {"image_size": 64}).data.image_size == (64, 64)  # as DataConfig takes it


def test_config_py_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, aevb.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
