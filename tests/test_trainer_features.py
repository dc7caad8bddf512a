"""What the trainer does around the loop: learning-rate schedules, the best checkpoint and early
stopping, figures during training, MLflow tracking, and what the user sees while it trains.

(Resuming with a schedule and a best checkpoint, bit for bit: tests/test_checkpoint.py.)"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import aevb
from aevb.checkpoint import BEST, CheckpointError, read_best, read_safetensors
from aevb.run import load
from aevb.config import ConfigError, RunConfig, TrainConfig
from aevb.data import load_dataset
from aevb.lr_schedules import lr_factor
from aevb.runconfig import apply_overrides, default_config
from aevb.train import TrainingDiverged, Trainer

from .vizmodels import aevb as aevb_cli

STEPS = 4  # steps per epoch of small(): 200 digits in batches of 50


def small(**kw) -> RunConfig:
    return apply_overrides(default_config("digits"), {"hidden": (16,), "latent_dim": 2, "batch_size": 50,
                                                      "subset": 200, "epochs": 2, **kw})


@functools.cache
def digits():
    return load_dataset(small().data)


def scripted_validation(monkeypatch, scores: list[float]) -> None:
    """Make epoch e's validation ELBO scores[e] (the weights still train as usual)."""
    monkeypatch.setattr(Trainer, "_validate", lambda self: {"valid_elbo": scores[self.epoch]})


# --- learning-rate schedules ------------------------------------------------------------------


def test_lr_factor_closed_forms():
    warm = TrainConfig(lr=0.1, lr_schedule="warmup", lr_warmup_steps=4, epochs=2)
    assert [lr_factor(s, warm, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = TrainConfig(lr=0.1, lr_schedule="cosine", lr_min=0.01, epochs=2)  # 20 steps of 10 an epoch
    assert lr_factor(0, cos, 10) == 1.0
    assert lr_factor(10, cos, 10) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi / 2) = 0
    assert lr_factor(20, cos, 10) == pytest.approx(0.1) and lr_factor(35, cos, 10) == pytest.approx(0.1)
    warm_cos = TrainConfig(lr=0.1, lr_schedule="cosine", lr_warmup_steps=5, epochs=2)
    assert lr_factor(4, warm_cos, 10) == 1.0 and lr_factor(5, warm_cos, 10) == 1.0
    assert lr_factor(5 + 15 // 2, warm_cos, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 15)))
    step = TrainConfig(lr_schedule="step", lr_step_epochs=2, lr_gamma=0.5, epochs=6)
    assert [lr_factor(s, step, 10) for s in (0, 19, 20, 39, 40, 59)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert lr_factor(3, TrainConfig(lr_schedule="plateau"), 10) == 1.0  # the plateau's rate is not closed-form


@pytest.mark.parametrize("settings,message", [
    ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, warmup, cosine, step, plateau"),
    ({"lr_schedule": "warmup"}, "lr_schedule 'warmup' needs lr_warmup_steps > 0"),
    ({"lr_warmup_steps": 10}, "lr_warmup_steps needs an lr_schedule"),
    ({"lr_schedule": "step", "lr_gamma": 1.5}, "lr_gamma must be between 0 and 1"),
    ({"lr_schedule": "cosine", "lr_min": 0.5, "lr": 0.1}, "lr_min must be >= 0 and below the learning rate 0.1"),
    ({"lr_step_epochs": 0}, "lr_step_epochs must be an integer >= 1"),
    ({"patience": -1}, "patience must be an integer >= 0"),
    ({"figures_every": 1.5}, "figures_every must be an integer >= 0"),
    ({"mlflow": " "}, "mlflow must be a tracking URI"),
])
def test_bad_settings_name_the_field(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings)


def test_the_rate_of_every_epoch_follows_the_schedule(tmp_path):
    cfg = small(lr_schedule="cosine", lr_warmup_steps=3, lr=0.01, lr_min=0.001, epochs=3)
    lines = Trainer(cfg, tmp_path / "r", dataset=digits(), progress=False).run()
    # the rate of each epoch's last step (global step - 1), exactly as LambdaLR computes it
    assert [m["lr"] for m in lines] == [0.01 * lr_factor(m["step"] - 1, cfg.train, STEPS) for m in lines]
    assert lines[0]["lr"] > lines[1]["lr"] > lines[2]["lr"] > 0.001  # annealing towards the floor
    constant = Trainer(small(epochs=1), tmp_path / "c", dataset=digits(), progress=False).run()
    assert {m["lr"] for m in constant} == {1e-3}


# --- the best checkpoint and early stopping --------------------------------------------------


def test_the_best_checkpoint_holds_the_best_epochs_weights(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [-5.0, -3.0, -4.0])
    run = aevb.train(small(epochs=3), out=tmp_path / "three", data=digits(), progress=False)
    assert read_best(run.dir) == {"key": "valid_elbo", "score": -3.0, "epoch": 2}
    two = aevb.train(small(epochs=2), out=tmp_path / "two", data=digits(), progress=False)  # the same 2 epochs
    best = load(run.dir, which="best")
    assert best.which == "best" and best.best["epoch"] == 2
    a, b = best.model.state_dict(), two.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = run.model.state_dict()
    assert any(not torch.equal(last[k], a[k]) for k in a)  # the last epoch's weights differ from the best's


def test_the_best_checkpoint_is_the_real_best_validation_elbo(tmp_path):
    from aevb.evaluate import evaluate_elbo

    run = aevb.train(small(epochs=3, lr=0.01), out=tmp_path / "r", data=digits(), progress=False)
    scores = [m["valid_elbo"] for m in run.metrics]
    best = read_best(run.dir)
    assert best["epoch"] == 1 + int(np.argmax(scores)) and best["score"] == max(scores)
    model = load(run.dir, which="best").model
    assert evaluate_elbo(model, digits().valid.x, kl="analytic", seed=0)["elbo"] == pytest.approx(best["score"],
                                                                                                   abs=1e-9)


def test_loading_the_best_of_a_run_without_one_says_so(tmp_path):
    from aevb.checkpoint import save_model
    from aevb.models import build_model

    cfg = small()
    save_model(tmp_path, build_model(cfg.model), cfg)
    with pytest.raises(CheckpointError, match="has no best.safetensors"):
        load(tmp_path, which="best")
    with pytest.raises(CheckpointError, match="which must be one of last, best"):
        load(tmp_path, which="first")


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path, monkeypatch, capsys):
    scripted_validation(monkeypatch, [-5.0, -3.0, -4.0, -3.5, -1.0, -1.0])
    lines = Trainer(small(epochs=6, patience=2), tmp_path / "r", dataset=digits(), progress=True).run()
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]  # epochs 3 and 4 did not beat epoch 2
    out = capsys.readouterr().out
    assert "epoch 4/6: " in out and "no improvement for 2/2 epochs" in out
    assert "early stopping after epoch 4: valid_elbo has not improved for 2 epochs (best -3.000 at epoch 2" in out
    assert read_best(tmp_path / "r")["epoch"] == 2
    # resuming an early-stopped run (with more epochs) trains no further
    resumed = aevb.train(out=tmp_path / "r", resume=True, epochs=8, data=digits(), progress=False)
    assert len(resumed.metrics) == 4


# --- figures during training --------------------------------------------------------------------


def test_figures_every_n_epochs_change_nothing_else(tmp_path):
    with_figures = Trainer(small(epochs=3, figures_every=2), tmp_path / "f", dataset=digits(), progress=False)
    with_figures.run()
    names = sorted(p.name for p in (tmp_path / "f" / "figures").iterdir())
    assert names == ["epoch_0002_reconstructions.png", "epoch_0002_samples.png"]
    for name in names:
        with Image.open(tmp_path / "f" / "figures" / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and np.asarray(im.convert("L")).std() > 10
    plain = Trainer(small(epochs=3), tmp_path / "p", dataset=digits(), progress=False)
    plain.run()
    a, b = with_figures.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the figures draw from their own generator
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "f" / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert {"figures/samples", "figures/reconstructions"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("figures/samples")] == [2 * STEPS]
    assert "lr" in acc.Tags()["scalars"]


# --- MLflow --------------------------------------------------------------------------------------


def test_mlflow_logs_params_metrics_figures_and_the_run_directory(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # recorded, so that the teardown removes what aevb sets
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    store = tmp_path / "mlruns"
    run_dir = tmp_path / "r"
    rc, out, err = aevb_cli(capsys, "train", "--dataset", "digits", "--subset", "200", "--epochs", "2",
                            "--hidden", "16", "--latent-dim", "2", "--figures-every", "1", "--mlflow", str(store),
                            "--out", run_dir, "--no-progress")
    assert rc == 0, err
    uri = store.absolute().as_uri()
    assert json.loads((run_dir / "config.json").read_text())["train"]["mlflow"] == uri  # absolute: resumable anywhere
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("aevb").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params["train.epochs"] == "2" and run.data.params["model.latent_dim"] == "2"
    metrics = load(run_dir).metrics
    history = client.get_metric_history(run.info.run_id, "valid_elbo")
    assert [(m.step, m.value) for m in history] == [(m["epoch"], m["valid_elbo"]) for m in metrics]

    def artifacts(folder):
        return sorted(a.path for a in client.list_artifacts(run.info.run_id, folder))

    assert artifacts("figures") == [f"figures/epoch_000{e}_{k}.png" for e in (1, 2)
                                    for k in ("reconstructions", "samples")]
    run_files = artifacts("run")
    for name in ("config.json", "metrics.jsonl", "model.safetensors", "best.safetensors", "train_state.safetensors",
                 "samples.png", "reconstructions.png", "report.html", "figures", "tensorboard"):
        assert f"run/{name}" in run_files, name

    # a resumed run continues the same MLflow run
    rc, _, err = aevb_cli(capsys, "train", "--resume", run_dir, "--epochs", "3", "--no-progress", "--no-figures")
    assert rc == 0, err
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid_elbo")] == [1, 2, 3]


def test_mlflow_missing_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kw):
        if name.startswith("mlflow"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(ConfigError, match=r"mlflow tracking needs MLflow: pip install \"aevb\[mlflow\]\""):
        Trainer(small(epochs=1, mlflow=str(tmp_path / "m")), tmp_path / "r", dataset=digits(), progress=False).run()


# --- what the user sees ----------------------------------------------------------------------------


def test_off_a_terminal_one_line_per_epoch_and_no_bar(tmp_path, capsys):
    Trainer(small(epochs=3, lr_schedule="step", lr_step_epochs=1, lr_gamma=0.5), tmp_path / "r", dataset=digits(),
            progress=True).run()
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"epoch {i + 1}/3: train_elbo ") for i, line in enumerate(lines))
    assert "valid_elbo" in lines[0] and "lr 0.00025" in lines[2]  # 1e-3 halved after epochs 1 and 2
    assert "step/s" not in err and "\r" not in err  # no progress bar in a log file
    Trainer(small(epochs=1), tmp_path / "q", dataset=digits(), progress=False).run()
    out, err = capsys.readouterr()
    assert out.startswith("epoch 1/1: train_elbo ") and len(out.splitlines()) == 1 and err == ""  # no bar


def test_on_a_terminal_the_bar_is_drawn_and_its_final_state_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    Trainer(small(epochs=2), tmp_path / "r", dataset=digits(), progress=True).run()
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == ["epoch 1/2", "epoch 2/2"]
    assert "step/s" in err or "s/step" in err
    screen = [line.split("\r")[-1] for line in err.split("\n")]  # what stays on a terminal: each line's last redraw
    final = [line for line in screen if f"{2 * STEPS}/{2 * STEPS}" in line]
    assert len(final) == 1 and final[0].startswith("100%"), screen


def test_the_iwae_epoch_line_shows_the_bound_trained_on(tmp_path, capsys):
    Trainer(small(epochs=1, objective="iwae", iwae_k=3), tmp_path / "r", dataset=digits(), progress=True).run()
    line = capsys.readouterr().out.strip()
    assert line.startswith("epoch 1/1: train_iwae (k=3) -"), line
    assert "valid_elbo" in line


def test_npy_data_says_what_was_found_and_how_it_was_split(tmp_path, capsys):
    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=g.integers(0, 256, (30, 6, 5), dtype=np.uint8), y=np.arange(30) % 3)
    aevb.train(dataset=f"npy:{tmp_path / 'd.npz'}", epochs=1, batch_size=8, hidden=(8,), latent_dim=2,
               out=tmp_path / "r", progress=True)
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"npy:{tmp_path / 'd.npz'}: 30 images (1x6x5), 3 classes; split 24 train, 3 validation, 3 test " \
                    "(a fixed shuffle)"


def test_the_first_compiled_step_says_it_is_compiling(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)  # the message, without the compile time
    lines = Trainer(small(epochs=1, compile=True), tmp_path / "r", dataset=digits(), progress=True).run()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("compiling the training step with torch.compile") and out[1].startswith("compiled in ")
    assert "compile_seconds" in lines[0]


def test_train_flags_reach_the_configuration(tmp_path, capsys):
    rc, _, err = aevb_cli(capsys, "train", "--dataset", "digits", "--subset", "400", "--epochs", "1", "--hidden", "8",
                          "--latent-dim", "2",
                          "--lr-schedule", "cosine", "--lr-warmup-steps", "5", "--lr-min", "1e-5", "--patience", "3",
                          "--figures-every", "1", "--out", tmp_path / "r", "--no-progress", "--no-figures")
    assert rc == 0, err
    t = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert (t["lr_schedule"], t["lr_warmup_steps"], t["lr_min"], t["patience"], t["figures_every"], t["mlflow"]) == \
        ("cosine", 5, 1e-5, 3, 1, None)
    assert (tmp_path / "r" / BEST).is_file() and (tmp_path / "r" / "figures" / "epoch_0001_samples.png").is_file()
    tensors, meta = read_safetensors(tmp_path / "r" / "train_state.safetensors")
    assert json.loads(meta["lr_schedule"])["per_step"]["last_epoch"] == 4  # steps: 400 digits, 100 a batch


def test_a_non_finite_validation_score_stops_the_run_before_early_stopping_could(tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [math.nan] * 4)
    with pytest.raises(TrainingDiverged, match="training stopped after epoch 1: valid_elbo is nan"):
        Trainer(small(epochs=4, patience=2), tmp_path / "r", dataset=digits(), progress=True).run()
    assert read_best(tmp_path / "r") is None
