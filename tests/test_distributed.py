"""Data-parallel training through torchrun (gloo on CPU), and mixed precision."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from aevb.checkpoint import load_train_state
from aevb.run import load
from aevb.config import ModelConfig
from aevb.distributed import DistInfo, ShardedNoise, reading_turn
from aevb.distributions import Bernoulli, DiagonalGaussian, DiscretizedLogistic, Gaussian, StandardNormal, noise
from aevb.evaluate import evaluate_elbo
from aevb.models import build_model
from aevb.train import Trainer
from aevb.runconfig import apply_overrides, default_config

from .conftest import run_cli

COMMON = ["train", "--dataset", "digits", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64",
          "--binarize", "dynamic", "--seed", "3", "--no-progress", "--no-figures"]


def torchrun(nproc: int, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "aevb", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kw)


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one(tmp_path):
    run_cli(*COMMON, "--epochs", "4", "--out", str(tmp_path / "one"))
    proc = torchrun(2, *COMMON, "--epochs", "4", "--out", str(tmp_path / "two"))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("run directory") == 1  # rank 0 alone reports
    one, two = load(tmp_path / "one"), load(tmp_path / "two")
    a, b = one.model.state_dict(), two.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    x = one.dataset().test.x
    e1, e2 = evaluate_elbo(one.model, x)["elbo"], evaluate_elbo(two.model, x)["elbo"]
    assert e1 == pytest.approx(e2, abs=1e-3)
    assert len(two.metrics) == 4 and two.metrics[-1]["step"] == one.metrics[-1]["step"]


@pytest.mark.slow
def test_distributed_run_resumes(tmp_path):
    proc = torchrun(2, *COMMON, "--epochs", "2", "--out", str(tmp_path / "r"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    proc = torchrun(2, "train", "--resume", str(tmp_path / "r"), "--epochs", "3", "--no-progress", "--no-figures")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert [m["epoch"] for m in load(tmp_path / "r").metrics] == [1, 2, 3]
    # and it ends where an uninterrupted 2-process run of 3 epochs ends: the same weights
    proc = torchrun(2, *COMMON, "--epochs", "3", "--out", str(tmp_path / "straight"))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    a, b = load(tmp_path / "straight").model.state_dict(), load(tmp_path / "r").model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _pid_with(marker: str, rank: str) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"AEVB_TEST_MARKER={marker}".encode() in env and f"RANK={rank}".encode() in env \
                and b"TORCHELASTIC_RUN_ID=none" not in env and f"LOCAL_RANK={rank}".encode() in env:
            return int(d.name)
    return None


def _start_and_find_rank_1(run: Path, args: list[str], marker: str, poll: float, env: dict | None = None):
    """Two processes training ``args`` into ``run``, tagged with ``marker``; returns (torchrun's process, rank 1's
    pid) once the first checkpoint is written (training under way)."""
    proc = torchrun(2, *args, "--out", str(run), env={"AEVB_TEST_MARKER": marker, **(env or {})})
    deadline = time.monotonic() + 120
    while not (run / "train_state.safetensors").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(poll)
    pid = _pid_with(marker, "1")
    assert pid is not None, "rank 1 not found"
    return proc, pid


@pytest.mark.slow
def test_a_killed_rank_stops_the_whole_run(tmp_path):
    marker = uuid.uuid4().hex
    run = tmp_path / "k"
    proc, pid = _start_and_find_rank_1(run, [*COMMON, "--epochs", "100000"], marker, poll=0.2)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=90)  # bounded: must not hang
    assert time.monotonic() - killed < 60
    assert proc.returncode != 0
    assert "Signal 9" in err or "SIGKILL" in err or "failed" in err.lower(), err[-2000:]


@pytest.mark.slow
def test_bf16_training_matches_fp32_within_half_a_nat(data_dir, tmp_path):
    # Averaged over three seeds: one pair of runs differs by chance as much as two float32 runs with
    # different seeds do (measured: float32 seeds 0-2 span 0.54 nats, bf16 - fp32 per seed 0.03 to 0.73).
    results: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for seed in (0, 1, 2):
        for precision in ("fp32", "bf16"):
            cfg = apply_overrides(default_config("mnist"), {
                "binarize": "dynamic", "epochs": 5, "batch_size": 100, "lr": 2e-3, "precision": precision,
                "hidden": (200,), "latent_dim": 10, "device": "cpu", "seed": seed})  # all 50,000 images: near a plateau
            t = Trainer(cfg, tmp_path / f"{precision}-{seed}", progress=False)
            t.run()
            results[precision].append(evaluate_elbo(t.model.eval(), t.data.test.x[:5000])["elbo"])
    means = {k: sum(v) / len(v) for k, v in results.items()}
    assert means["fp32"] > -125  # it learned
    assert abs(means["bf16"] - means["fp32"]) < 0.5, results


def test_batch_must_divide_by_processes_and_fp16_needs_cuda():
    from aevb.config import ConfigError

    cfg = apply_overrides(default_config("digits"), {"precision": "fp16", "device": "cpu"})
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        Trainer(cfg, "/tmp/never", progress=False)
    proc = run_cli("train", "--device", "cuda" if not torch.cuda.is_available() else "mps", "--out", "/tmp/never",
                   check=False)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in proc.stderr and proc.returncode == 1


def _assert_same_weights(a_run, b_run, atol=1e-5):
    a, b = a_run.model.state_dict(), b_run.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=1e-4), k


# -- every random draw of a step, sharded over the ranks -----------------------------------------

def _draws(rows: slice | None, info: DistInfo, sizes=None):
    """Each sampler's draw for the global batch of 6 (rows None, a plain generator) or for ``rows`` of it
    on one rank (a ShardedNoise view of the same seeded generator)."""
    g = torch.Generator().manual_seed(7)
    src = g if rows is None else ShardedNoise(g, info, sizes)
    rows = rows or slice(None)
    torch.manual_seed(0)
    mu, log_var, params = torch.randn(6, 3), torch.randn(6, 3), torch.randn(6, 2, 4, 5)  # (B, Z), (B, C, H, W)
    return [DiagonalGaussian(mu[rows], log_var[rows]).rsample(4, generator=src),  # (L, B, Z): batch on -2
            StandardNormal(3).sample(len(mu[rows]), generator=src),  # (B, Z): batch on 0
            Bernoulli(params[rows], event_ndim=3).sample(src),  # (B, C, H, W): batch before the event
            Gaussian(params[rows], params[rows] * 0.1, event_ndim=3).sample(src),
            DiscretizedLogistic(params[rows].sigmoid(), params[rows] - 2, event_ndim=3).sample(src)]


@pytest.mark.parametrize("sizes", [None, (4, 2)])
def test_each_rank_draws_its_rows_of_the_global_noise(sizes):
    whole = _draws(None, DistInfo())
    cuts = (slice(0, 3), slice(3, 6)) if sizes is None else (slice(0, 4), slice(4, 6))
    shards = [_draws(rows, DistInfo(rank, 2), sizes) for rank, rows in enumerate(cuts)]
    batch_axes = [-2, 0, 0, 0, 0]
    for i, axis in enumerate(batch_axes):
        assert torch.equal(torch.cat([shards[0][i], shards[1][i]], axis), whole[i]), i


def test_a_noise_source_needs_the_batch_axis():
    with pytest.raises(ValueError, match="batch axis"):
        noise("normal", (2, 3), ShardedNoise(torch.Generator(), DistInfo(0, 2)))


def test_validation_numbers_do_not_depend_on_the_number_of_processes():
    from aevb.train import _rows, validation_batches, validation_sums

    torch.manual_seed(0)
    model = build_model(ModelConfig(input_shape=(1, 8, 8), hidden=(16,), latent_dim=3)).eval()
    x = torch.rand(301, 1, 8, 8, generator=torch.Generator().manual_seed(1)).bernoulli(
        generator=torch.Generator().manual_seed(2))
    from aevb.data import Split

    def summed(world: int) -> dict[str, float]:
        total: dict[str, float] = {}
        for rank in range(world):
            info = DistInfo(rank, world)
            batches = validation_batches(len(x), 100, info)
            mine = _rows(Split(x), batches)
            for k, v in validation_sums(model, mine.x, None, batches, "analytic", info).items():
                total[k] = total.get(k, 0.0) + v.item()
        return total

    one = summed(1)
    assert one["elbo"] / len(x) == pytest.approx(evaluate_elbo(model, x, batch_size=100)["elbo"], rel=1e-9)
    for world in (2, 3):
        assert summed(world) == pytest.approx(one, rel=1e-9)


def test_data_is_read_rank_zero_first_then_one_process_per_machine():
    assert reading_turn(DistInfo(0, 4, 0)) == 0
    assert reading_turn(DistInfo(2, 4, 0)) == 1  # the first process of the second machine
    assert reading_turn(DistInfo(1, 4, 1)) == reading_turn(DistInfo(3, 4, 1)) == 2


# -- end to end under torchrun ---------------------------------------------------------------------

@pytest.mark.slow
def test_wake_sleep_on_two_processes_ends_with_the_weights_of_one(tmp_path):
    args = [*COMMON, "--algorithm", "wake-sleep", "--epochs", "2", "--subset", "512"]
    run_cli(*args, "--out", str(tmp_path / "one"))
    proc = torchrun(2, *args, "--out", str(tmp_path / "two"), env={"AEVB_DIST_TIMEOUT": "60"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    one, two = load(tmp_path / "one"), load(tmp_path / "two")
    _assert_same_weights(one, two)
    assert two.metrics[-1]["valid_elbo"] == pytest.approx(one.metrics[-1]["valid_elbo"], abs=1e-3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_machines(cwds: list[Path], *args: str) -> None:
    """``aevb ARGS`` launched as two machines of one process each: two torchrun launchers, node ranks
    0 and 1, rendezvous on 127.0.0.1, each in its own folder (so a relative run directory is on
    storage the other machine cannot see)."""
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={i}",
                               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
                               "-m", "aevb", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "AEVB_DIST_TIMEOUT": "60"})
             for i, cwd in enumerate(cwds)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert sum(out.count("run directory") for out, _ in outs) == 1  # rank 0 alone reports


@pytest.mark.slow
def test_two_machines_without_shared_storage_train_and_resume_as_one_process(tmp_path):
    run_cli(*COMMON, "--epochs", "3", "--out", str(tmp_path / "one"))
    cwds = [tmp_path / "node0", tmp_path / "node1"]
    for d in cwds:
        d.mkdir()
    _two_machines(cwds, *COMMON, "--epochs", "2", "--out", "run")
    _two_machines(cwds, "train", "--resume", "run", "--epochs", "3", "--no-progress", "--no-figures")
    assert not (cwds[1] / "run").exists()  # the second machine neither read nor wrote a run directory
    one, two = load(tmp_path / "one"), load(cwds[0] / "run")
    _assert_same_weights(one, two)
    assert [m["epoch"] for m in two.metrics] == [1, 2, 3]
    for a, b in zip(one.metrics, two.metrics):  # validation scores the same rows with the same noise
        assert b["valid_elbo"] == pytest.approx(a["valid_elbo"], abs=1e-4)
        assert b["train_elbo"] == pytest.approx(a["train_elbo"], abs=1e-4)


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_every_rank_at_one_step_and_resumes_mid_epoch(tmp_path):
    args = [*COMMON, "--epochs", "30"]
    # The ranks stop at the first step where they poll (a checkpoint every 7 steps, the guard every 25); that
    # step is an epoch's end (every 20 steps) for about one interrupt in eleven, and the test needs one
    # mid-epoch: up to three tries, each a fresh run.
    for attempt in range(3):
        marker = uuid.uuid4().hex
        run = tmp_path / f"c{attempt}"
        proc, pid = _start_and_find_rank_1(run, [*args, "--checkpoint-every", "7"], marker, poll=0.05,
                                           env={"AEVB_DIST_TIMEOUT": "60"})
        os.kill(pid, signal.SIGINT)  # one process only: the others never see a Ctrl-C
        sent = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert time.monotonic() - sent < 45, "the ranks waited for the collective timeout"
        steps = re.findall(r"interrupted at step (\d+)", err)
        assert len(steps) == 2 and steps[0] == steps[1], err[-3000:]  # both ranks stop at one step...
        _, progress, _ = load_train_state(run)
        assert progress["global_step"] == int(steps[0])  # ...checkpointed there
        if progress["global_step"] % 20:
            break
    assert progress["global_step"] % 20, "the interrupt landed on an epoch's end three times; the test needs it mid-epoch"
    proc = torchrun(2, "train", "--resume", str(run), "--no-progress", "--no-figures",
                    env={"AEVB_DIST_TIMEOUT": "30"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    run_cli(*args, "--out", str(tmp_path / "one"))
    one, two = load(tmp_path / "one"), load(run)
    _assert_same_weights(one, two, atol=1e-4)
    stopped = progress["epoch"]  # the epoch the interrupt cut: its training sums came from both ranks
    assert two.metrics[stopped]["train_elbo"] == pytest.approx(one.metrics[stopped]["train_elbo"], abs=1e-3)
