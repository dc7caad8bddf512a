"""Crash safety and numerical guards: NaN in data or weights, clipping, Ctrl-C, SIGKILL + resume."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb.checkpoint import TRAIN_STATE, read_safetensors
from aevb.run import load
from aevb.data import Dataset, Split, load_dataset
from aevb.train import Trainer, TrainingDiverged
from aevb.runconfig import apply_overrides, default_config

from .conftest import run_cli


def cfg(**kw):
    return apply_overrides(default_config("digits"), {"hidden": (32,), "latent_dim": 4, "batch_size": 50, **kw})


def test_nan_in_a_batch_skips_the_step_and_counts_it(tmp_path, capsys):
    ds = load_dataset(cfg().data)
    x = ds.train.x.clone()
    x[:3] = float("nan")  # three poisoned images: the batches holding them are skipped
    data = Dataset(ds.name, Split(x, ds.train.y), ds.valid, ds.test, ds.binary, ds.num_classes)
    t = Trainer(cfg(epochs=3), tmp_path / "r", dataset=data, progress=False)
    lines = t.run()
    assert 3 <= lines[-1]["skipped_steps"] <= 9  # one to three batches an epoch
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert lines[-1]["valid_elbo"] > lines[0]["valid_elbo"] - 1  # it kept learning
    # every epoch reports its own skipped fraction, in metrics.jsonl and in the epoch line
    skipped = [round(m["skipped_fraction"] * t.steps_per_epoch) for m in lines]
    assert all(1 <= s <= 3 for s in skipped) and sum(skipped) == lines[-1]["skipped_steps"]
    assert [m["skipped_fraction"] for m in load(tmp_path / "r").metrics] == \
        [round(s / t.steps_per_epoch, 4) for s in skipped]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [p.rsplit(", skipped ", 1)[1] for p in printed] == [f"{s / t.steps_per_epoch:.0%} of steps" for s in skipped]


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

    monkeypatch.delenv("AEVB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shutil.copytree(data_dir / "frey_face", tmp_path / "frey_face")
    f = tmp_path / "frey_face" / "frey_rawface.mat"
    f.chmod(0o644)
    f.write_bytes(f.read_bytes()[:5000])
    with pytest.raises(DataError, match="sha256 mismatch .* corrupt or truncated"):
        load_dataset(DataConfig(dataset="frey_face", data_dir=str(tmp_path), download=False))


# --- every error one line (issue 20) ----------------------------------------------------------


def aevb(capsys, *args) -> tuple[int, str, str]:
    """``aevb ARGS`` in this process (monkeypatches reach it): exit status, stdout, stderr."""
    from aevb.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *args, code: int = 1) -> str:
    rc, _, err = aevb(capsys, *args)
    lines = err.strip().splitlines()
    assert rc == code and len(lines) == 1 and lines[0].startswith("aevb: error: "), (rc, err)
    return lines[0]


TINY = {"dataset": "digits", "hidden": (16,), "latent_dim": 2, "batch_size": 50, "epochs": 1, "progress": False}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    import aevb

    out = tmp_path_factory.mktemp("tiny") / "run"
    aevb.train(out=out, **TINY)
    return out


# 1. output locations


def test_an_output_below_a_file_is_one_line_for_every_command(tiny_run, tmp_path, capsys, monkeypatch):
    from aevb.reproduce import figure2

    monkeypatch.setattr(figure2, "run", lambda *a, **k: pytest.fail("reproduce computed before checking --out"))
    f = tmp_path / "notes.txt"
    f.write_text("a file, not a folder")
    for args in (["train", "--epochs", "1", "--no-progress", "--out", f / "run"],
                 ["sample", tiny_run, "--out", f / "s.png"], ["reconstruct", tiny_run, "--out", f / "r.png"],
                 ["plot", tiny_run, "--kind", "samples", "--out", f / "plots"],
                 ["report", tiny_run, "--out", f / "r.html"],
                 ["reproduce", "figure2", "--budget", "100", "--out", f / "fig"]):
        line = one_line_error(capsys, *args)
        assert f"{f} is a file, not a folder" in line or f"{f}: it is a file, not a folder" in line, line
    assert f.read_text() == "a file, not a folder"


def _failing(errno_code: int, strerror: str):
    def fail(*args, **kwargs):
        raise OSError(errno_code, strerror)
    return fail


@pytest.mark.parametrize("errno_code,strerror,hint", [
    (28, "No space left on device", "the disk is full: free some space or write elsewhere"),
    (13, "Permission denied", "check its permissions or choose another path"),
    (30, "Read-only file system", "the file system is read-only: write elsewhere")])
def test_an_unwritable_output_is_refused_before_any_work(tiny_run, tmp_path, capsys, monkeypatch, errno_code,
                                                         strerror, hint):
    import aevb.checkpoint as ckpt
    from aevb.reproduce import figure2

    monkeypatch.setattr(figure2, "run", lambda *a, **k: pytest.fail("reproduce computed before checking --out"))
    monkeypatch.setattr(ckpt.tempfile, "mkstemp", _failing(errno_code, strerror))  # every file aevb writes
    before = sorted(p.name for p in tiny_run.iterdir())
    for args, path in ((["train", "--epochs", "1", "--no-progress", "--out", tmp_path / "run"], tmp_path / "run"),
                       (["sample", tiny_run], tiny_run), (["plot", tiny_run, "--kind", "curves"], tiny_run / "plots"),
                       (["report", tiny_run], tiny_run),
                       (["reproduce", "figure2", "--budget", "100", "--out", tmp_path / "fig"], tmp_path / "fig")):
        assert one_line_error(capsys, *args) == f"aevb: error: {path}: {strerror}; {hint}"
    assert sorted(p.name for p in tiny_run.iterdir()) == before and not (tmp_path / "run").exists()


def test_a_full_disk_while_writing_the_weights_leaves_no_lone_config(tmp_path, capsys, monkeypatch):
    import aevb.checkpoint as ckpt

    real = ckpt.atomic_write

    def full_for_weights(path, data):
        if Path(path).name == ckpt.WEIGHTS:
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write", full_for_weights)
    out = tmp_path / "run"
    line = one_line_error(capsys, "train", "--epochs", "1", "--hidden", "16", "--no-progress", "--out", out)
    assert line == f"aevb: error: {out / ckpt.WEIGHTS}: No space left on device; the disk is full: free some space " \
                   "or write elsewhere"
    assert not out.exists() or list(out.iterdir()) == []  # before: a lone config.json


def test_atomic_write_and_metrics_leave_the_old_file_when_the_disk_fills(tmp_path, monkeypatch):
    import aevb.checkpoint as ckpt

    target = tmp_path / "run" / "config.json"
    ckpt.atomic_write(target, b"old")
    monkeypatch.setattr(ckpt.os, "fsync", _failing(28, "No space left on device"))
    with pytest.raises(OSError, match="No space left on device") as e:
        ckpt.atomic_write(target, b"new")
    assert e.value.filename == str(target)  # the file meant, not the temporary file
    assert target.read_bytes() == b"old" and sorted(p.name for p in target.parent.iterdir()) == ["config.json"]
    monkeypatch.undo()  # metrics.jsonl: one whole line or none
    ckpt.append_metrics(tmp_path / "run", {"epoch": 1})
    monkeypatch.setattr(ckpt.os, "fsync", _failing(28, "No space left on device"))
    with pytest.raises(OSError, match="No space left on device"):
        ckpt.append_metrics(tmp_path / "run", {"epoch": 2})
    assert (tmp_path / "run" / ckpt.METRICS).read_text() == '{"epoch": 1}\n'


def test_a_real_full_disk(tmp_path, capsys):
    """On a 300 KiB tmpfs (where this machine lets the tests mount one): one line, no lone config.json."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no permission)")
    try:
        line = one_line_error(capsys, "train", "--epochs", "1", "--no-progress", "--no-figures", "--out", disk / "run")
        assert line.endswith("No space left on device; the disk is full: free some space or write elsewhere"), line
        assert list((disk / "run").iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# 2. runs that blow up


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "inf", "learning rate must be positive and finite; got inf"),
    ("--lr", "nan", "learning rate must be positive and finite; got nan"),
    ("--weight-decay", "inf", "weight_decay must be >= 0 and finite; got inf"),
    ("--beta", "inf", "beta must be >= 0 and finite; got inf"),
    ("--clip-grad-norm", "inf", "clip_grad_norm must be positive and finite; got inf"),
    ("--init-std", "inf", "init_std must be positive and finite; got inf")])
def test_non_finite_settings_are_refused(tmp_path, capsys, flag, value, message):
    assert one_line_error(capsys, "train", flag, value, "--out", tmp_path / "x") == f"aevb: error: {message}"
    assert not (tmp_path / "x").exists()


def test_an_epoch_mostly_skipped_stops_the_run(tmp_path):
    t = Trainer(cfg(epochs=3, lr=1e3, batch_size=100), tmp_path / "r", progress=False)
    assert t.steps_per_epoch == 12 < t.config.train.max_skips  # the consecutive-skip limit cannot fire
    with pytest.raises(TrainingDiverged, match=r"after epoch 1: (\d+) of its 12 steps \(\d+%\) were skipped because "
                                               r"the loss or gradient norm was .*no checkpoint was written") as e:
        t.run()  # before: exit 0 after 11 of 12 steps skipped, valid_elbo -8.5e19
    skipped = int(str(e.value).split(": ")[1].split(" of")[0])
    assert skipped > 6
    assert not (tmp_path / "r" / TRAIN_STATE).exists() and not (tmp_path / "r" / "metrics.jsonl").exists()


def test_a_validation_elbo_that_is_not_finite_stops_the_run(tmp_path):
    ds = load_dataset(cfg().data)
    bad = ds.valid.x.clone()
    bad[0] = float("nan")
    data = Dataset(ds.name, ds.train, Split(bad, ds.valid.y), ds.test, ds.binary, ds.num_classes)
    with pytest.raises(TrainingDiverged, match="after epoch 1: valid_elbo is nan"):
        Trainer(cfg(epochs=2), tmp_path / "r", dataset=data, progress=False).run()


@pytest.fixture
def diverged_run(tiny_run, tmp_path) -> Path:
    import shutil

    from aevb.checkpoint import save_model

    out = tmp_path / "diverged"
    shutil.copytree(tiny_run, out)
    run = load(out)
    with torch.no_grad():
        next(run.model.parameters()).fill_(float("nan"))
    save_model(out, run.model, run.config)
    return out


def test_figures_and_the_report_of_a_diverged_model_say_why(diverged_run, capsys):
    from aevb.report import figures

    drawn = figures(load(diverged_run))  # before: LinAlgError from the scatter's PCA
    assert isinstance(drawn["curves"], bytes)
    for kind in ("manifold", "scatter", "samples", "reconstructions", "interpolate", "traverse"):
        assert drawn[kind].startswith("the model's weights hold 1024 NaN or infinite values (in encoder.trunk.0.weight)"), drawn[kind]
    for args in (["sample", diverged_run], ["plot", diverged_run, "--kind", "scatter"]):
        assert "training diverged, so there is nothing to draw" in one_line_error(capsys, *args)
    assert aevb(capsys, "report", diverged_run)[0] == 0


# 3. run history


def test_resume_refuses_fewer_epochs_than_done(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "config.json").write_text((run / "config.json").read_text().replace('"epochs": 1', '"epochs": 3'))
    import aevb
    aevb.train(out=run, resume=True, progress=False)  # now 3 epochs done
    config = (run / "config.json").read_text()
    line = one_line_error(capsys, "train", "--resume", run, "--epochs", "2", "--no-progress")
    assert line == f"aevb: error: {run} has already trained 3 epochs; epochs must be at least 3 (got 2)"
    assert (run / "config.json").read_text() == config  # before: rewritten to 2, exit 0


def test_training_into_an_existing_run_is_refused_unless_overwrite(tiny_run, tmp_path):
    import shutil

    import aevb
    from aevb.config import ConfigError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights, metrics = (run / "model.safetensors").read_bytes(), (run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run; resume it .*overwrite=True"):
        aevb.train(out=run, **TINY)  # before: weights replaced, metrics.jsonl appended to
    assert (run / "model.safetensors").read_bytes() == weights and (run / "metrics.jsonl").read_text() == metrics
    aevb.train(out=run, overwrite=True, **{**TINY, "epochs": 2})
    assert [m["epoch"] for m in load(run).metrics] == [1, 2]  # a new history, not appended to the old


def test_an_output_folder_with_other_files_is_refused(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    line = one_line_error(capsys, "train", "--epochs", "1", "--out", tmp_path / "photos")
    assert line == f"aevb: error: {tmp_path / 'photos'} is not empty and is not a run directory; choose an empty or " \
                   "new folder"
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["holiday.jpg"]


# 4. devices


@pytest.mark.parametrize("device", ["banana", "cuda:7"])
def test_a_device_this_machine_lacks_is_one_line_naming_those_it_has(tmp_path, capsys, monkeypatch, device):
    import aevb
    import aevb.runconfig
    from aevb.devices import DeviceError, available_devices

    if device in available_devices():
        pytest.skip(f"this machine has {device}")
    line = one_line_error(capsys, "train", "--device", device, "--out", tmp_path / "x")
    assert line.startswith("aevb: error: --device: ") and line.endswith(f"this machine has: auto, "
                                                                        f"{', '.join(available_devices())}")
    monkeypatch.setattr(aevb.runconfig, "load_dataset", lambda cfg: pytest.fail("the data were read first"))
    with pytest.raises(DeviceError, match=f"this machine has: auto, {available_devices()[0]}"):
        aevb.train(device=device, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


# 5. memory


def test_the_memory_estimate_counts_the_model_exactly_without_allocating():
    from aevb.config import ModelConfig
    from aevb.memory import model_footprint
    from aevb.models import build_model

    for m in (ModelConfig(input_shape=(1, 28, 28), hidden=(400,)),
              ModelConfig(input_shape=(3, 20, 16), architecture="conv", likelihood="discretized_logistic"),
              ModelConfig(input_shape=(1, 8, 8), num_classes=10), ModelConfig(family="ae", hidden=(30, 20))):
        params, activations = model_footprint(m)
        assert params == sum(p.numel() for p in build_model(m).parameters())
        assert activations > 0
    # 784-400-20 by hand: encoder 784*400+400 + mean and log-variance heads 2*(400*20+20), decoder 20*400+400 + 400*784+784
    assert model_footprint(ModelConfig(input_shape=(1, 28, 28), hidden=(400,)))[0] == 652824
    big = ModelConfig(input_shape=(1, 8, 8), hidden=(100_000, 100_000))
    assert model_footprint(big)[0] == 64 * 10**5 + 10**5 + 10**10 + 10**5 + 2 * (10**5 * 20 + 20) \
        + 20 * 10**5 + 10**5 + 10**10 + 10**5 + 10**5 * 64 + 64  # 80 GB of float32: counted, never allocated


def test_a_model_too_big_for_the_memory_is_refused_with_the_estimate(tmp_path, capsys, monkeypatch):
    import aevb.memory

    line = one_line_error(capsys, "train", "--hidden", "100000,100000", "--out", tmp_path / "x")
    assert "training this model needs about 748.8 GiB (20,019,200,104 parameters" in line  # before: died allocating
    assert "--hidden" in line and "--architecture conv" in line and "--image-size" in line
    monkeypatch.setattr(aevb.memory, "available_bytes", lambda device="cpu": 5 << 20)  # 5 MiB free
    line = one_line_error(capsys, "train", "--hidden", "400", "--out", tmp_path / "x")
    # 4 bytes x (10 copies of 76,104 parameters with Adam + a validation batch of 1000 x 1,704 activations)
    assert "needs about 9.4 MiB (76,104 parameters, 1,704 activations per image at batch size 100) but cpu has " \
           "5.0 MiB free" in line
    assert not (tmp_path / "x").exists()


def test_a_folder_too_big_for_the_memory_is_refused_before_decoding(tmp_path, capsys, monkeypatch):
    from aevb.data import custom

    from .imagefiles import zeros_png

    page = zeros_png(3000, 3000, bit_depth=8)  # 9 MB of pixels in 9 kB
    for i in range(600):
        (tmp_path / f"{i:03d}.png").write_bytes(page)
    monkeypatch.setattr(custom, "_pixels", lambda *a: pytest.fail("an image was decoded"))
    monkeypatch.setattr("aevb.memory.available_bytes", lambda device="cpu": 16 << 30)  # 16 GiB free, as here
    line = one_line_error(capsys, "train", "--dataset", f"folder:{tmp_path}", "--out", tmp_path / "run")
    assert line == (f"aevb: error: folder:{tmp_path}: 600 images of 3000x3000 pixels (1 channel(s)) need about "
                    "40.2 GiB as float32 tensors but this machine has 16.0 GiB free; bring them to a smaller size "
                    "with image_size (--image-size on the command line, e.g. 64)")


# 6. tiny data


def test_a_ten_image_folder_trains_and_reports(tmp_path, capsys):
    from aevb.report import figures

    from .imagefiles import image_bytes

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(10):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(image_bytes(rng.integers(0, 256, (8, 8), dtype=np.uint8)))
    code, out, err = aevb(capsys, "train", "--dataset", f"folder:{tmp_path / 'imgs'}", "--batch-size", "4", "--epochs", "1",
                          "--hidden", "16", "--latent-dim", "3", "--no-progress", "--out", tmp_path / "run")
    assert code == 0 and "report.html" in out, err  # before: IndexError in viz.project_2d
    drawn = figures(load(tmp_path / "run"))
    assert isinstance(drawn["scatter"], bytes) and isinstance(drawn["traverse"], bytes)
    assert drawn["interpolate"] == "image index 1 is outside the test split (0..0)"


# 7. config files


def test_a_config_file_with_values_of_the_wrong_kind_names_the_field(tiny_run, tmp_path, capsys):
    import json

    for section, key, value, message in (("train", "lr", "0.01", "train.lr must be a number; got the string '0.01'"),
                                         ("model", "hidden", 400, "model.hidden must be a list of integers; got the "
                                                                   "integer 400")):
        config = json.loads((tiny_run / "config.json").read_text())
        config[section][key] = value
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps(config))
        assert one_line_error(capsys, "train", "--config", path, "--out", tmp_path / "x") == \
            f"aevb: error: {message}"


def test_a_config_file_for_other_data_is_refitted_to_the_data_set(tiny_run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (40, 12, 10), dtype=np.uint8))
    code, _, err = aevb(capsys, "train", "--config", tiny_run / "config.json", "--dataset", f"npy:{tmp_path / 'x.npy'}",
                        "--batch-size", "10", "--no-progress", "--no-figures", "--out", tmp_path / "run")
    assert code == 0, err  # before: a shape mismatch, although flags override the file
    assert load(tmp_path / "run").config.model.input_shape == (1, 12, 10)


# 9. messages


def test_a_truncated_checkpoint_says_so(tiny_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = run / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    line = one_line_error(capsys, "sample", run)
    assert line.startswith(f"aevb: error: {weights} is truncated: it has {len(whole) // 2} bytes of the {len(whole)}")
    assert "pickle" not in line
    weights.write_bytes(b"")
    assert "is empty (0 bytes)" in one_line_error(capsys, "sample", run)


def test_serve_on_a_port_in_use_is_one_line(tiny_run, capsys):
    import socket

    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, out, err = aevb(capsys, "serve", tiny_run, "--port", port)
    assert rc == 1 and out == ""  # before: the "listening on" line first, then uvicorn's error
    assert err == f"aevb: error: cannot listen on 127.0.0.1 port {port}: Address already in use; choose another " \
                  "port with --port, or stop the program using it\n"
