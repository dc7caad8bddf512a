"""Batched multi-model training (aevb.batched): K models in one stacked step give each model the weights
that training it alone gives, for every objective, likelihood and optimizer the stack supports; and
``aevb reproduce figure2`` writes the same CSV batched and one model at a time."""

import csv
from functools import partial

import pytest
import torch

from aevb.batched import StackedOptimizer, StackedVAE, fused_optimizer, train_stacked, why_not_stackable
from aevb.config import ModelConfig
from aevb.objectives import elbo
from aevb.reproduce import figure2
from aevb.reproduce.common import build, train_loop
from aevb.wake_sleep import wake_sleep_step_loss

pytestmark = pytest.mark.skipif(why_not_stackable([build(ModelConfig(input_shape=(1, 2, 2), hidden=(2,)), 0)])
                                is not None, reason="no oneDNN fused linear or fused optimizers here")

OBJECTIVES = {"B": ("elbo", partial(elbo, samples=1, kl="analytic"), "analytic", 1),
              "A2": ("elbo", partial(elbo, samples=2, kl="mc"), "mc", 2),
              "wake-sleep": ("wake-sleep", wake_sleep_step_loss, "analytic", 1)}


def _config(nz, likelihood, activation="tanh", hidden=(12,)):
    return ModelConfig(input_shape=(1, 6, 5), likelihood=likelihood, hidden=hidden, activation=activation,
                       latent_dim=nz, init_std=0.1)


def _data(likelihood, n=48):
    x = torch.rand(n, 1, 6, 5, generator=torch.Generator().manual_seed(0))
    return (x < 0.4).float() if likelihood == "bernoulli" else x


def _max_diff(models_a, models_b):
    return max((a - b).abs().max().item() for ma, mb in zip(models_a, models_b)
               for a, b in zip(ma.state_dict().values(), mb.state_dict().values()))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_three_stacked_models_equal_three_separate_runs(likelihood, objective, optimizer):
    name, loss, kl, samples = OBJECTIVES[objective]
    nzs, lrs, steps = (2, 3, 5), (0.01, 0.03, 0.1), 30  # different latent sizes and step sizes
    x = _data(likelihood)
    alone = []
    for nz, lr in zip(nzs, lrs):
        m = build(_config(nz, likelihood), 0)
        train_loop(m, x, loss, fused_optimizer(m, optimizer, lr, 1 / len(x)), steps, 16, [], None)
        alone.append(m)
    together = [build(_config(nz, likelihood), 0) for nz in nzs]
    start = _max_diff(alone, together)
    stack = StackedVAE(together)
    train_stacked(stack, x, name, StackedOptimizer(stack, optimizer, lrs, weight_decay=1 / len(x)), steps, 16,
                  samples=samples, kl=kl)
    assert start > 1e-3  # training moved the weights ...
    assert _max_diff(alone, together) <= 1e-5  # ... and the stacked models moved exactly as alone


def test_two_hidden_layers_relu_and_dynamic_binarization():
    x = torch.rand(40, 1, 6, 5, generator=torch.Generator().manual_seed(1))  # grey levels, binarized per step
    cfgs = [_config(nz, "bernoulli", "relu", hidden=(10, 8)) for nz in (2, 4)]
    alone = []
    for cfg in cfgs:
        m = build(cfg, 3)
        train_loop(m, x, OBJECTIVES["B"][1], fused_optimizer(m, "adam", 0.01), 12, 8, [], None, seed=0,
                   dynamic_binarize=True)
        alone.append(m)
    together = [build(cfg, 3) for cfg in cfgs]
    stack = StackedVAE(together)
    train_stacked(stack, x, "elbo", StackedOptimizer(stack, "adam", [0.01, 0.01]), 12, 8, dynamic_binarize=True)
    assert _max_diff(alone, together) <= 1e-5


def test_what_does_not_stack_says_why():
    base = _config(2, "bernoulli")
    assert why_not_stackable([build(base, 0), build(_config(3, "bernoulli", hidden=(7,)), 0)]) == \
        "the models differ in hidden: stack only models of one architecture"
    assert "Gaussian posterior" in why_not_stackable([build(ModelConfig(input_shape=(1, 6, 5), hidden=(4,),
                                                                        flow="planar"), 0)])
    assert "softplus" in why_not_stackable([build(_config(2, "bernoulli", "softplus"), 0)])
    with pytest.raises(ValueError, match="cannot train stacked: the models differ in likelihood"):
        StackedVAE([build(base, 0), build(_config(2, "gaussian"), 0)])


def _fake_mnist(dataset, data_dir=None):
    from aevb.data import Dataset, Split

    g = torch.Generator().manual_seed(0)
    proto = torch.rand(4, 1, 28, 28, generator=g) * 0.8 + 0.1

    def split(n):
        return Split(torch.bernoulli(proto[torch.arange(n) % 4], generator=g), None)

    return Dataset(dataset, split(200), split(40), split(40), binary=True)


def test_figure2_batched_writes_the_csv_of_separate_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(figure2, "load_paper_data", _fake_mnist)
    tables = {}
    for batched in (True, False):
        out = tmp_path / str(batched)
        figure2.run("mnist", out, budget=500, nzs=(2, 3), n_eval=20, points=2, log=lambda m: None,
                    batched=batched)  # the step size chosen by the trials, batched too
        with open(out / "figure2_mnist.csv") as f:
            tables[batched] = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    assert len(tables[True]) == 2 * 2 * 2  # 2 latent sizes x 2 algorithms x 2 points
    assert tables[True] == tables[False]


def test_wake_sleep_dreams_from_a_discretized_logistic_decoder_as_alone():
    x = (torch.rand(32, 1, 6, 5, generator=torch.Generator().manual_seed(2)) * 255).round() / 255
    cfgs = [_config(nz, "discretized_logistic") for nz in (2, 3)]
    alone = []
    for cfg in cfgs:
        m = build(cfg, 0)
        train_loop(m, x, wake_sleep_step_loss, fused_optimizer(m, "adagrad", 0.05), 10, 16, [], None)
        alone.append(m)
    together = [build(cfg, 0) for cfg in cfgs]
    stack = StackedVAE(together)
    train_stacked(stack, x, "wake-sleep", StackedOptimizer(stack, "adagrad", [0.05, 0.05]), 10, 16)
    assert _max_diff(alone, together) <= 1e-5
