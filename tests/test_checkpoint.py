"""Save -> load gives identical outputs; a resumed run ends bit-identical to one that never
stopped; broken run directories give clear errors and nothing is ever unpickled."""

from __future__ import annotations

import json

import pytest
import torch

import aevb
from aevb.checkpoint import CheckpointError, read_safetensors, save_model
from aevb.run import load
from aevb.config import ModelConfig, RunConfig
from aevb.data import load_dataset
from aevb.models import build_model
from aevb.train import Trainer
from aevb.runconfig import apply_overrides, default_config


def small_config(**kw) -> RunConfig:
    cfg = default_config("digits")
    return apply_overrides(cfg, {"hidden": (32,), "latent_dim": 4, "batch_size": 50, "epochs": 2, **kw})


@pytest.mark.parametrize("kind,likelihood", [("vae", "bernoulli"), ("vae", "gaussian"), ("ae", "gaussian_fixed")])
def test_save_load_identical_outputs(tmp_path, kind, likelihood):
    cfg = RunConfig(model=ModelConfig(input_shape=(1, 8, 8), hidden=(16, 8), latent_dim=3, family=kind,
                                      likelihood=likelihood))
    torch.manual_seed(0)
    m = build_model(cfg.model).eval()
    save_model(tmp_path, m, cfg)
    run = load(tmp_path)
    assert run.config == cfg
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(run.model.embed(x), m.embed(x))
    assert torch.equal(run.model.reconstruct(x), m.reconstruct(x))
    z = torch.randn(4, 3)
    assert torch.equal(run.model.decode(z).mean, m.decode(z).mean)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(run.model.sample(6, generator=g1), m.sample(6, generator=g2))


def test_config_json_round_trip():
    cfg = small_config(optimizer="adagrad", estimator="mc", samples=3, init_std=0.01)
    assert RunConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["model"]["hidden"] == [32]


@pytest.mark.parametrize("optimizer", ["adam", "adagrad", "sgd"])
def test_resume_is_bit_identical(tmp_path, optimizer):
    data = load_dataset(small_config().data)
    cfg = small_config(optimizer=optimizer, binarize="dynamic", lr=0.01)  # dynamic: the noise generator matters too
    full = Trainer(cfg, tmp_path / "full", dataset=data, progress=False)
    full.run()
    # Stop mid-epoch (step 37 of 2*25), then continue in a fresh Trainer as `--resume` does.
    Trainer(cfg, tmp_path / "cut", dataset=data, progress=False).run(stop_after_steps=37)
    resumed = Trainer(cfg, tmp_path / "cut", dataset=data, progress=False)
    resumed.restore()
    assert resumed.global_step == 37 and resumed.epoch == 1
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = [json.loads(x) for x in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (tmp_path / "cut/metrics.jsonl").read_text().splitlines()]
    assert [m["valid_elbo"] for m in ma] == [m["valid_elbo"] for m in mb]
    assert len(mb) == 2
    # the training metrics too: epoch 2's means include the 12 steps before the stop (the saved sums)
    train_metrics = lambda lines: [{k: v for k, v in m.items() if k.startswith("train_")} for m in lines]  # noqa: E731
    assert train_metrics(ma) == train_metrics(mb) and "train_elbo" in train_metrics(ma)[1]


SCHEDULES = [  # (settings, the step to stop at): each schedule's state must survive the stop
    ({"lr_schedule": "cosine", "lr_warmup_steps": 10, "figures_every": 1}, 37),
    ({"lr_schedule": "step", "lr_step_epochs": 1, "lr_gamma": 0.5, "optimizer": "adagrad"}, 37),
    # 4 steps an epoch at a rate too high: the plateau scheduler cuts the rate in epochs 3 and 4, around the stop
    ({"lr_schedule": "plateau", "lr_patience": 0, "lr_gamma": 0.5, "lr": 0.3, "subset": 200, "epochs": 6,
      "patience": 4}, 13),
]


@pytest.mark.parametrize("settings,stop", SCHEDULES, ids=[s["lr_schedule"] for s, _ in SCHEDULES])
def test_resume_with_a_schedule_and_the_best_checkpoint_is_bit_identical(tmp_path, settings, stop):
    from aevb.checkpoint import BEST, read_best

    cfg = small_config(**{"binarize": "dynamic", "lr": 0.01, **settings})
    data = load_dataset(cfg.data)
    full = Trainer(cfg, tmp_path / "full", dataset=data, progress=False)
    full.run()
    Trainer(cfg, tmp_path / "cut", dataset=data, progress=False).run(stop_after_steps=stop)
    resumed = Trainer(cfg, tmp_path / "cut", dataset=data, progress=False)
    resumed.restore()
    assert resumed.global_step == stop
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    timing = ("seconds", "compile_seconds")
    ma = [{k: v for k, v in m.items() if k not in timing} for m in load(tmp_path / "full").metrics]
    mb = [{k: v for k, v in m.items() if k not in timing} for m in load(tmp_path / "cut").metrics]
    assert ma == mb and len(ma) == cfg.train.epochs
    assert resumed.lr_schedule.state_dict() == full.lr_schedule.state_dict()
    lrs = [m["lr"] for m in ma]
    assert len(set(lrs)) > 1  # the schedule did change the rate
    best_a, best_b = read_best(tmp_path / "full"), read_best(tmp_path / "cut")
    assert best_a == best_b and best_a["epoch"] == 1 + max(range(len(ma)), key=lambda i: ma[i]["valid_elbo"])
    ta, _ = read_safetensors(tmp_path / "full" / BEST)
    tb, _ = read_safetensors(tmp_path / "cut" / BEST)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_api_train_and_load(tmp_path):
    run = aevb.train(dataset="digits", epochs=2, hidden=(16,), latent_dim=2, out=tmp_path / "r", progress=False)
    assert isinstance(run.model, aevb.VAE) and run.model.latent_dim == 2
    assert len(run.metrics) == 2
    again = aevb.load(tmp_path / "r")
    x = run.dataset().test.x[:4]
    assert torch.equal(again.model.embed(x), run.model.embed(x))


def test_bad_run_directories(tmp_path):
    with pytest.raises(CheckpointError, match="is not a directory"):
        load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load(tmp_path / "empty")
    cfg = small_config()
    save_model(tmp_path / "r", build_model(cfg.model), cfg)
    d = json.loads((tmp_path / "r/config.json").read_text())
    d["format_version"] = 999
    (tmp_path / "r/config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="format_version 999 is not supported"):
        load(tmp_path / "r")


def test_pickle_is_refused(tmp_path):
    cfg = small_config()
    m = build_model(cfg.model)
    save_model(tmp_path, m, cfg)
    torch.save(m.state_dict(), tmp_path / "model.safetensors")  # a pickle under the right name
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load(tmp_path)
    with pytest.raises(CheckpointError, match="is missing"):
        read_safetensors(tmp_path / "nothing.safetensors")


def test_weights_that_do_not_match_the_config(tmp_path):
    cfg = small_config()
    save_model(tmp_path, build_model(cfg.model), cfg)
    other = apply_overrides(cfg, {"latent_dim": 7})
    (tmp_path / "config.json").write_text(other.to_json())
    with pytest.raises(CheckpointError, match="does not match config.json"):
        load(tmp_path)


def test_tensorboard_events_are_written_when_installed(tmp_path):
    pytest.importorskip("tensorboard")  # installed by the [test] extra, so CI exercises this
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    aevb.train(dataset="digits", epochs=3, hidden=(16,), latent_dim=2, out=tmp_path / "r", progress=False)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    assert "valid/elbo" in acc.Tags()["scalars"] and "train/kl" in acc.Tags()["scalars"]
    values = [e.value for e in acc.Scalars("valid/elbo")]
    metrics = [m["valid_elbo"] for m in aevb.load(tmp_path / "r").metrics]
    assert values == pytest.approx(metrics, rel=1e-6)


def _fake_cuda_noise_state(run_dir, tag: bool) -> None:
    """Make a run's saved noise generator look as if it was saved on CUDA (a 16-byte state), with the
    device tag or, as files written before the tag, without."""
    from safetensors.torch import save as st_save

    path = run_dir / "train_state.safetensors"
    tensors, meta = read_safetensors(path)
    tensors["rng.noise"] = torch.zeros(16, dtype=torch.uint8)
    meta.pop("rng_device", None)
    if tag:
        meta["rng_device"] = "cuda"
    path.write_bytes(st_save(tensors, meta))


@pytest.mark.parametrize("tag", [True, False])
def test_resume_on_another_device_type_reseeds_the_noise(tmp_path, tag):
    data = load_dataset(small_config().data)
    cfg = small_config(binarize="dynamic", epochs=1)
    Trainer(cfg, tmp_path, dataset=data, progress=False).run(stop_after_steps=5)
    _fake_cuda_noise_state(tmp_path, tag)
    resumed = Trainer(cfg, tmp_path, dataset=data, progress=False)
    with pytest.warns(UserWarning, match="re-seeded from the step"):
        resumed.restore()  # not set_state's traceback (a CPU generator's state is 5056 bytes)
    from aevb.checkpoint import reseed_noise

    expected = torch.Generator().manual_seed(cfg.train.seed + 1)
    reseed_noise(expected, 5)
    assert torch.equal(resumed.noise.get_state(), expected.get_state())  # deterministic: seed and step
    assert resumed.run()[-1]["step"] == 25


def test_a_restored_optimizer_keeps_its_own_kernel_flags(tmp_path):
    from aevb.checkpoint import restore_train_state, save_train_state

    model = build_model(small_config().model)
    saved = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)  # e.g. on a device with fused kernels
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    saved.step()
    save_train_state(tmp_path, model, saved, {"rng.noise": torch.Generator().get_state()}, {"global_step": 1})
    own = torch.optim.Adam(model.parameters(), lr=0.5, foreach=False)  # where they are not
    restore_train_state(tmp_path, model, own, torch.Generator(), torch.device("cpu"))
    group = own.param_groups[0]
    assert group["fused"] is None and group["foreach"] is False
    assert group["lr"] == 0.01  # the saved hyperparameters
    own.step()  # the default kernel takes the restored state
    assert int(own.state[group["params"][0]]["step"]) == 2


def test_fused_optimizer_falls_back_when_its_first_step_fails(monkeypatch):
    from aevb.train import make_optimizer

    class NoFusedStep(torch.optim.Adagrad):  # accepts fused=True, fails at the first step (Adagrad on CUDA)
        def step(self, closure=None):
            if self.defaults.get("fused"):
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices: ['cpu']")
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "Adagrad", NoFusedStep)
    model = build_model(small_config().model)
    opt = make_optimizer(small_config(optimizer="adagrad"), model.parameters())
    assert isinstance(opt, NoFusedStep) and not opt.defaults["fused"]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
