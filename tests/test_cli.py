"""The `aevb` command end to end, as a user runs it (subprocesses, real data)."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
import torch
from PIL import Image

from aevb.checkpoint import read_config
from aevb.data import load_dataset
from aevb.evaluate import evaluate_elbo
from aevb.models import build_model

from .baselines import bernoulli_baseline
from .conftest import run_cli


def untrained_test_elbo(run_dir) -> float:
    cfg = read_config(run_dir)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model)
    return evaluate_elbo(model, load_dataset(cfg.data).test.x)["elbo"]


@pytest.mark.slow
def test_train_evaluate_sample_reconstruct_on_digits(tmp_path):
    run = tmp_path / "digits"
    out = run_cli("train", "--dataset", "digits", "--epochs", "40", "--out", str(run), "--no-progress")
    assert "run directory" in out.stdout
    for name in ("config.json", "model.safetensors", "train_state.safetensors", "metrics.jsonl",
                 "samples.png", "reconstructions.png"):
        assert (run / name).is_file(), name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 40
    res = json.loads(run_cli("evaluate", str(run), "--k", "200", "--json").stdout)
    assert {"elbo", "log_likelihood", "k", "log_likelihood_stderr", "bits_per_dim"} <= set(res)
    assert res["k"] == 200 and res["n"] == 300
    base = untrained_test_elbo(run)
    assert base < -40  # about 64 * ln 2 for logits near 0
    assert res["elbo"] > base + 12, (res["elbo"], base)
    assert res["elbo"] <= res["log_likelihood"] + 3 * res["log_likelihood_stderr"]
    ds = load_dataset(read_config(run).data)
    independent = bernoulli_baseline(ds.train.x, ds.test.x)  # -27.2: the best of a decoder ignoring z
    assert res["elbo"] > independent + 1.5, (res["elbo"], independent)  # measured -24.1
    assert res["log_likelihood"] > independent + 1.5, (res["log_likelihood"], independent)  # measured -23.6

    run_cli("sample", str(run), "--n", "16", "--out", str(tmp_path / "s.png"))
    run_cli("reconstruct", str(run), "--n", "8", "--out", str(tmp_path / "r.png"))
    for p in ("s.png", "r.png"):
        with Image.open(tmp_path / p) as im:
            assert im.size[0] > 100 and im.size[1] > 50

    # continue the same run for more epochs
    run_cli("train", "--resume", str(run), "--epochs", "42", "--no-progress", "--no-figures")
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 42


@pytest.mark.slow
def test_train_on_an_mnist_subset(tmp_path, data_dir):
    run = tmp_path / "mnist"
    run_cli("train", "--dataset", "mnist", "--subset", "2000", "--binarize", "dynamic", "--epochs", "8",
            "--batch-size", "100", "--out", str(run), "--no-progress", "--no-figures")
    res = json.loads(run_cli("evaluate", str(run), "--k", "50", "--n", "500", "--json").stdout)
    base = untrained_test_elbo(run)
    assert base < -500  # about 784 * ln 2
    assert res["elbo"] > base + 300, (res["elbo"], base)
    assert res["log_likelihood"] > res["elbo"]
    ds = load_dataset(read_config(run).data)  # the 2000 training images, the binarized test split
    independent = bernoulli_baseline(ds.train.x, ds.test.x[:500])  # -200.5: a decoder ignoring z
    assert res["elbo"] > independent + 15, (res["elbo"], independent)  # measured -160.5
    assert res["log_likelihood"] > independent + 20, (res["log_likelihood"], independent)  # measured -153.5


@pytest.mark.parametrize("args,message", [
    (["train", "--epochs", "0"], "Invalid value for '--epochs'"),
    (["train", "--optimizer", "rmsprop"], "Invalid value for '--optimizer'"),
    (["train", "--hidden", "4x"], "expected comma-separated layer widths"),
    (["train", "--lr", "-1", "--out", "{tmp}/x"], "learning rate must be positive"),
    (["train", "--batch-size", "5000", "--out", "{tmp}/x"], "batch size 5000 is larger than the training split"),
    (["train", "--dataset", "imagenet", "--out", "{tmp}/x"], "unknown data set 'imagenet'"),
    (["train", "--frobnicate"], "No such option"),
    (["evaluate", "{tmp}/nope"], "is not a directory"),
    (["evaluate", "{tmp}", "--k", "-1"], "Invalid value for '--k'"),
    (["sample", "{tmp}"], "no config.json"),
])
def test_bad_input_gives_one_line_error(tmp_path, args, message):
    proc = run_cli(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert proc.returncode in (1, 2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aevb: error:") and message in lines[0], lines[0]
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_module_entry_point_and_help():
    out = run_cli("--help").stdout
    for cmd in ("train", "evaluate", "sample", "reconstruct"):
        assert cmd in out
    assert "digits" in run_cli("data", "list").stdout


def test_bare_aevb_prints_the_help_and_succeeds():
    proc = run_cli()
    assert proc.stdout.startswith("Usage: aevb") and "train" in proc.stdout and "evaluate" in proc.stdout
    assert proc.stderr == ""


HEAVY = ("torch", "matplotlib", "numpy", "scipy", "sklearn", "fastapi")


def test_help_imports_neither_torch_nor_the_other_heavy_libraries():
    from aevb.cli import cli

    paths = [[]]  # every command and subcommand, each asked for --help
    for name, command in cli.commands.items():
        paths.append([name])
        paths += [[name, sub] for sub in getattr(command, "commands", {})]
    code = ("import json, sys\n"
            "from aevb.cli import main\n"
            f"codes = [main([*path, '--help']) for path in {paths!r}]\n"
            f"print(json.dumps([codes, [m for m in {HEAVY!r} if m in sys.modules]]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    codes, loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == [0] * len(paths)
    assert loaded == []


def test_every_device_option_defaults_to_auto():
    from aevb.cli import cli

    commands = [c for c in cli.commands.values()]
    commands += [sub for c in list(commands) for sub in getattr(c, "commands", {}).values()]
    devices = [p for c in commands for p in c.params if p.name == "device"]
    assert len(devices) >= 7  # train, evaluate, sample, reconstruct, plot, report, serve
    assert {p.default for p in devices} == {"auto"}


def test_int_list_parser():
    from aevb.cli.options import int_list

    widths = int_list("layer widths", "500 or 400,400")
    assert widths(None, None, "400, 400") == (400, 400)
    assert widths(None, None, None) is None
    for bad, message in [("4x", "expected comma-separated layer widths such as 500 or 400,400"),
                         ("0,3", "layer widths must be positive integers"), ("", "must be positive integers")]:
        with pytest.raises(click.BadParameter, match=message):
            widths(None, None, bad)
    dims = int_list("latent dimensions", "0,1", count=2, min_value=None)
    assert dims(None, None, "3,-1") == (3, -1)
    with pytest.raises(click.BadParameter, match="expected two latent dimensions such as 0,1"):
        dims(None, None, "0,1,2")
    with pytest.raises(click.BadParameter, match="integers of at least 2"):
        int_list("sizes", "2,3", min_value=2)(None, None, "1")


def test_the_package_loads_its_public_names_on_first_use():
    code = ("import sys, aevb\n"
            "assert 'torch' not in sys.modules and 'train' in dir(aevb)\n"
            "from aevb.train import Trainer  # the submodules first: aevb.train stays the function\n"
            "import aevb.evaluate\n"
            "assert callable(aevb.train) and aevb.train.__module__ == 'aevb.train', aevb.train\n"
            "assert callable(aevb.evaluate) and aevb.evaluate.__module__ == 'aevb.evaluate', aevb.evaluate\n"
            "from aevb import *\n"
            "assert VAE is aevb.VAE and load is aevb.load\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    import aevb

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        aevb.nope  # noqa: B018


def test_the_log_variance_clamp_is_a_flag(tmp_path, capsys):
    from .vizmodels import aevb

    run = tmp_path / "r"
    rc, _, err = aevb(capsys, "train", "--dataset", "digits", "--likelihood", "gaussian", "--hidden", "8",
                      "--latent-dim", "2", "--epochs", "1", "--log-var-min", "-12.5", "--log-var-max", "4",
                      "--out", run, "--no-progress", "--no-figures")
    assert rc == 0, err
    model = read_config(run).model
    assert (model.log_var_min, model.log_var_max) == (-12.5, 4.0)
    rc, out, err = aevb(capsys, "evaluate", run, "--k", "0", "--no-probe", "--json")
    res = json.loads(out)
    assert 0 <= res["decoder_scale_at_clamp"] <= 1 and "bits_per_dim" not in res  # a density: no bits/dim


def copied_run(src, dst):
    """A copy of a trained run (its config, weights and metrics) that a test may write into."""
    dst.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "metrics.jsonl"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_evaluate_keeps_evaluation_json_with_its_settings(tmp_path, capsys):
    from aevb.checkpoint import read_evaluation

    from .vizmodels import aevb, digits_run

    run = copied_run(digits_run(4).dir, tmp_path / "r")
    rc, out, err = aevb(capsys, "evaluate", run, "--k", "20", "--n", "50", "--seed", "3", "--no-probe", "--json")
    assert rc == 0, err
    printed = json.loads(out)
    kept = read_evaluation(run)
    assert printed == kept
    assert (kept["k"], kept["n"], kept["seed"], kept["split"]) == (20, 50, 3, "test")
    assert kept["binarization"].startswith("dynamic:")  # digits under a Bernoulli decoder: dynamic by default
    assert len(kept["kl_per_dim"]) == 4 and not any(k.startswith("kl_dim_") for k in kept)
    assert sum(kept["kl_per_dim"]) == pytest.approx(kept["kl"], rel=1e-4)
    for key in ("elbo", "log_likelihood", "log_likelihood_stderr", "bits_per_dim", "active_units", "written"):
        assert key in kept, key
    rc, out, _ = aevb(capsys, "evaluate", run, "--k", "7", "--n", "30", "--no-probe")
    assert rc == 0 and "30 images, log p(x) with k = 7 importance samples per image, seed 0:" in out
    assert "kl_per_dim" in out and f"wrote {run / 'evaluation.json'}" in out
    assert read_evaluation(run)["k"] == 7  # the latest evaluation replaces the last


def test_evaluation_record_names_the_binarization_protocol():
    from aevb.evaluate import evaluation_record

    res = {"n": 2, "k": 5, "elbo": -1.0, "kl_dim_1": 0.5, "kl_dim_0": 0.25, "kl_dim_10": 0.125}
    record = evaluation_record(res, split="valid", seed=4, binarize="dynamic")
    assert record["kl_per_dim"] == [0.25, 0.5, 0.125]  # by dimension, 10 after 1
    assert record["binarization"].startswith("dynamic: the evaluation splits sampled once") and record["seed"] == 4
    assert evaluation_record(res, split="test", seed=0, binarize="static")["binarization"].startswith("static")


@pytest.mark.parametrize("command,flag,words", [
    ("evaluate", "--k", "log p(x) estimate"),
    ("train", "--iwae-k", "IWAE training bound"),
    ("train", "--samples", "training ELBO estimate"),
])
def test_each_sample_count_says_which_estimate_it_belongs_to(capsys, command, flag, words):
    from aevb.cli import main

    capsys.readouterr()
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    start = text.index(f"{flag} INTEGER")  # the option's own line, not a mention in the description
    assert words in text[start : start + 200], text[start : start + 200]
