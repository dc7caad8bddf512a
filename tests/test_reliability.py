"""Crash safety and numerical guards: NaN in data or weights, clipping, Ctrl-C, SIGKILL + resume."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aevb.checkpoint import TRAIN_STATE, load, read_safetensors
from aevb.data import Dataset, Split, load_dataset
from aevb.train import Trainer, TrainingDiverged
from aevb.runconfig import apply_overrides, default_config

from .conftest import run_cli


def cfg(**kw):
    return apply_overrides(default_config("digits"), {"hidden": (32,), "latent_dim": 4, "batch_size": 50, **kw})


def test_nan_in_a_batch_skips_the_step_and_counts_it(tmp_path):
    ds = load_dataset(cfg().data)
    x = ds.train.x.clone()
    x[:3] = float("nan")  # three poisoned images: the batches holding them are skipped
    data = Dataset(ds.name, Split(x, ds.train.y), ds.valid, ds.test, ds.binary, ds.num_classes)
    t = Trainer(cfg(epochs=3), tmp_path / "r", dataset=data, progress=False)
    lines = t.run()
    assert 3 <= lines[-1]["skipped_steps"] <= 9  # one to three batches an epoch
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert lines[-1]["valid_elbo"] > lines[0]["valid_elbo"] - 1  # it kept learning


def test_nan_in_the_weights_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    t = Trainer(cfg(epochs=5, max_skips=7), tmp_path / "r", progress=False)
    t.run(stop_after_steps=30)
    good = (tmp_path / "r" / TRAIN_STATE).read_bytes()
    with torch.no_grad():
        t.model.decoder.mean.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"the last \d+ steps were skipped \(limit 7\) .* not finite .* last good checkpoint"):
        t.run()
    assert (tmp_path / "r" / TRAIN_STATE).read_bytes() == good
    tensors, _ = read_safetensors(tmp_path / "r" / TRAIN_STATE)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


def test_gradient_norm_threshold_skips_and_clipping_bounds_the_update(tmp_path):
    t = Trainer(cfg(epochs=1, skip_grad_norm=1e-9, max_skips=3), tmp_path / "a", progress=False)
    before = [p.detach().clone() for p in t.model.parameters()]
    with pytest.raises(TrainingDiverged, match=r"gradient norm was .* > 1e-09"):
        t.run()
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))  # nothing was applied

    t = Trainer(cfg(epochs=1, optimizer="sgd", lr=0.1, clip_grad_norm=0.01), tmp_path / "b", progress=False)
    before = torch.nn.utils.parameters_to_vector(t.model.parameters()).detach().clone()
    t.run(stop_after_steps=1)
    delta = torch.nn.utils.parameters_to_vector(t.model.parameters()).detach() - before
    assert 0 < delta.norm().item() <= 0.1 * 0.01 * (1 + 1e-5)


# --- real processes, interrupted -------------------------------------------------------------

ARGS = ["--dataset", "digits", "--hidden", "32", "--latent-dim", "4", "--batch-size", "50", "--epochs", "25",
        "--binarize", "dynamic", "--checkpoint-every", "7", "--no-progress", "--no-figures"]


def start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aevb", "train", *ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 60
    while not (out / TRAIN_STATE).exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("ref") / "run"
    run_cli("train", *ARGS, "--out", str(out))
    return load(out).model.state_dict()


def _assert_same(reference, out: Path) -> None:
    got = load(out).model.state_dict()
    assert all(torch.equal(reference[k], got[k]) for k in reference)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.4, 1.1])
def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path, reference, delay):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_checkpoint(proc, out)
    time.sleep(delay + random.Random(int(delay * 10)).uniform(0, 0.2))
    proc.kill()  # SIGKILL
    proc.wait(timeout=30)
    state, _ = read_safetensors(out / TRAIN_STATE)  # never half-written
    assert state
    run_cli("train", "--resume", str(out), "--no-progress", "--no-figures")
    _assert_same(reference, out)
    assert [m["epoch"] for m in load(out).metrics] == list(range(1, 26))
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(tmp_path, reference):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130
    assert "checkpoint saved" in err and f"aevb train --resume {out}" in err
    run_cli("train", "--resume", str(out), "--no-progress", "--no-figures")
    _assert_same(reference, out)


# --- bad input ------------------------------------------------------------------------------


def test_bernoulli_decoder_rejects_data_outside_unit_interval(tmp_path):
    ds = load_dataset(cfg().data)
    data = Dataset(ds.name, Split(ds.train.x * 2 - 0.5, ds.train.y), ds.valid, ds.test, False, 10)
    with pytest.raises(ValueError, match=r"Bernoulli decoder needs data in \[0, 1\]"):
        Trainer(cfg(), tmp_path / "r", dataset=data, progress=False)
    assert not (tmp_path / "r").exists()


def test_truncated_local_file_is_a_checksum_error(data_dir, tmp_path, monkeypatch):
    import shutil

    from aevb.config import DataConfig
    from aevb.data import DataError

    monkeypatch.delenv("AEVB_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shutil.copytree(data_dir / "frey_face", tmp_path / "frey_face")
    f = tmp_path / "frey_face" / "frey_rawface.mat"
    f.chmod(0o644)
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(DataError, match="sha256 mismatch .* corrupt or truncated"):
        load_dataset(DataConfig(dataset="frey_face", data_dir=str(tmp_path), download=False))
