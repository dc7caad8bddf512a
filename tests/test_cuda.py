"""The CUDA paths, for a machine with a GPU (``benchmarks/gpu_check.sh`` runs them there): fused
optimizers, bf16 and fp16 training, torch.compile, DDP over nccl, seeded determinism, and resume
moving between the CPU and CUDA. Every test skips without CUDA."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from aevb.run import load
from aevb.config import ModelConfig
from aevb.runconfig import apply_overrides, default_config
from aevb.train import Trainer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def cfg(**kw):
    return apply_overrides(default_config("digits"), {"hidden": (64,), "latent_dim": 4, "batch_size": 50,
                                                     "epochs": 2, "device": "cuda", **kw})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["adam", "adagrad", "sgd"])
def test_fused_optimizers_train_on_cuda_like_the_cpu(tmp_path, optimizer):
    runs = {}
    for device in ("cpu", "cuda"):
        t = Trainer(cfg(optimizer=optimizer, lr=3e-3, device=device), tmp_path / device, progress=False)
        lines = t.run()
        runs[device] = lines[-1]["valid_elbo"]
        assert math.isfinite(runs[device])
    assert abs(runs["cpu"] - runs["cuda"]) < 0.5, runs  # same seeds, same data: rounding apart


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_matches_fp32_within_half_a_nat(tmp_path, precision):
    ref = Trainer(cfg(epochs=3), tmp_path / "fp32", progress=False).run()[-1]["valid_elbo"]
    got = Trainer(cfg(epochs=3, precision=precision), tmp_path / precision, progress=False).run()[-1]["valid_elbo"]
    assert abs(got - ref) < 0.5, (precision, got, ref)


def test_compiled_training_matches_eager_on_cuda(tmp_path):
    eager = Trainer(cfg(), tmp_path / "eager", progress=False).run()[-1]["valid_elbo"]
    compiled = Trainer(cfg(compile=True), tmp_path / "compiled", progress=False).run()[-1]["valid_elbo"]
    assert abs(compiled - eager) < 0.05, (compiled, eager)


def test_seeded_conv_training_is_bit_identical_on_cuda(tmp_path):
    kw = {"architecture": "conv", "conv_channels": (8, 16)}
    a = Trainer(cfg(**kw), tmp_path / "a", progress=False)
    a.run()
    b = Trainer(cfg(**kw), tmp_path / "b", progress=False)
    b.run()
    for k, v in weights(a.model).items():
        assert torch.equal(v, weights(b.model)[k]), k


@pytest.mark.parametrize("first,second", [("cpu", "cuda"), ("cuda", "cpu")])
def test_resume_moves_between_the_cpu_and_cuda(tmp_path, first, second):
    out = tmp_path / "run"
    Trainer(cfg(device=first, epochs=1), out, progress=False).run()
    t = Trainer(apply_overrides(cfg(device=first, epochs=1), {"device": second, "epochs": 2}), out, progress=False)
    t.restore()
    lines = t.run()
    assert math.isfinite(lines[-1]["valid_elbo"])
    assert next(load(out, device=second).model.parameters()).device.type == second


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over nccl needs two GPUs")
def test_two_gpus_over_nccl_end_with_the_weights_of_one(tmp_path):
    common = ["--dataset", "digits", "--hidden", "32", "--latent-dim", "3", "--batch-size", "100", "--epochs", "2",
              "--device", "cuda", "--no-progress", "--no-figures"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        subprocess.run([sys.executable, "-m", "aevb", "train", *common, *extra, "--out", str(tmp_path / name)],
                       check=True, env=env)
    one, two = weights(load(tmp_path / "one").model), weights(load(tmp_path / "two").model)
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=1e-4, rtol=1e-4)


def test_a_model_config_builds_and_samples_on_cuda():
    from aevb.models import build_model

    model = build_model(ModelConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=2)).cuda()
    images = model.sample(4, generator=torch.Generator(device="cuda").manual_seed(0))
    assert images.device.type == "cuda" and images.shape == (4, 1, 8, 8)
