"""`aevb explain`: the worked example, step by step."""

from __future__ import annotations

import json
import math

import pytest
import torch

from aevb.distributions import Gaussian
from aevb.explain import Example, explain

from .conftest import run_cli


def values(**kw):
    return {s["name"]: s["value"] for s in explain(Example(**kw))}


def test_defaults_reproduce_the_worked_example():
    v = values()
    assert v["h"] == pytest.approx([0.2, 0.6], abs=1e-12)
    assert v["mu"] == pytest.approx([-0.04, 0.02], abs=1e-12)
    assert v["log_var"] == pytest.approx([-0.02, 0.04], abs=1e-12)
    assert v["x_recon"] == pytest.approx([0.044, 0.137, 0.23], abs=1e-12)
    assert v["reconstruction_error"] == pytest.approx(1.485605, abs=1e-9)
    assert v["kl"] == pytest.approx(0.00150472375, abs=1e-10)
    # the loss is the negative ELBO under the note's N(x; x', I): error / 2 + 3/2 log(2 pi) + KL
    assert v["neg_log_likelihood"] == pytest.approx(1.485605 / 2 + 1.5 * math.log(2 * math.pi), abs=1e-9)
    assert v["loss"] == pytest.approx(3.501123, abs=1e-6)
    assert v["loss"] == pytest.approx(v["neg_log_likelihood"] + v["kl"], abs=1e-12)
    lik = Gaussian(torch.tensor(v["x_recon"], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert v["neg_log_likelihood"] == pytest.approx(-lik.log_prob(torch.tensor(v["x"])).item(), abs=1e-12)


def test_other_weights_and_noise():
    v = values(eps=[1.0, -1.0], x_recon=None)
    sigma = v["sigma"]
    assert v["z"] == pytest.approx([-0.04 + sigma[0], 0.02 - sigma[1]])
    v = values(b_lv=[0.0, 0.0], b_mu=[0.0, 0.0], W_mu=[[0, 0], [0, 0]])
    assert v["kl"] == 0.0  # q = N(0, I) is the prior
    with pytest.raises(ValueError, match=r"b_lv must have shape \[2\]"):
        values(b_lv=[0.0])


def test_cli_prints_the_steps_and_json():
    out = run_cli("explain").stdout
    for needle in ("h = W_e x + b_e", "[0.2, 0.6]", "[-0.04, 0.02]", "1.485605", "0.001504724"):
        assert needle in out, needle
    loss = next(line for line in out.splitlines() if line.strip().startswith("loss"))
    assert loss.endswith("= 3.501123") and "-log N(x; x', I) + KL" in loss, loss  # the note's likelihood
    assert "3.499618" in out and "1.48711" not in out
    v = json.loads(run_cli("explain", "--json", "--eps", "[0.5, 0.5]").stdout)
    assert v["kl"] == pytest.approx(0.00150472375, abs=1e-10) and v["eps"] == [0.5, 0.5]
    bad = run_cli("explain", "--x", "[1, 2]", check=False)
    assert bad.returncode == 1 and bad.stderr.strip() == "aevb: error: W_e must have shape [2, 2]; got [2, 3]"
