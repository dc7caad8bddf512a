"""Training speed, side by side: aevb's trainer, the pytorch/examples recipe and pythae 0.1.2.

Same model (MNIST 784-400-20 relu MLP, Bernoulli decoder, Adam 1e-3, batch 128, all 60,000
training images). Every system runs in its own child process (one process tree), and the
children are interleaved: round 1 runs each system for a few epochs, then round 2 again, so
that machine noise hits every system alike. Each child reports its epoch times (training only:
no evaluation, no checkpoint) and its peak resident memory. The parent measures the matmul
rate (a large float32 GEMM at the same thread count) before and after, and the matmul floor
of an epoch: 3 passes (forward, and two for backward) of the four weight matrices.

    python benchmarks/train_speed.py speed --rounds 3 --epochs 2 --json docs/bench-train-speed.json
    python benchmarks/train_speed.py target --max-epochs 60 --json docs/bench-time-to-elbo.json

``target`` trains each system until its test -ELBO (dynamically binarized MNIST test set, the
same fixed draw for every system) is at most 100 nats, evaluating after every epoch (the
evaluation is not counted), and reports the training seconds to get there.

Systems: aevb (fp32, eager), aevb-b32 (the same at batch 32), aevb-mkl (the same with AEVB_ONEDNN=0: every layer through
PyTorch's own linear instead of oneDNN, see aevb.nets.dense), aevb-compile (``--compile``), aevb-bf16 (bf16 autocast),
aevb-fast (the ``fast`` preset: see aevb.config.PRESETS), recipe (pytorch/examples/vae
as written there: per-item Dataset + DataLoader, ``.item()`` every step) and pythae
(0.1.2's TrainingPipeline with the same networks; skipped when pythae is not installed:
``pip install pythae==0.1.2 --no-deps``). pythae has no dynamic binarization, so it trains
on one fixed binarization of the training set. aevb-stack4 trains 4 models (initialised with seeds
0-3, one data order, each its own binarization and noise) in one stacked step (``aevb.batched``, the
loop of ``aevb reproduce``; fused Adam per model), the way a sweep over seeds or settings runs; its
``seconds`` are per model (the stack's epoch / 4), so its ratios compare the cost of one model's epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mnist_vs_recipe import (BinarizedMNIST, RecipeVAE, peak_rss_mb, recipe_epoch, recipe_test_elbo,  # noqa: E402
                             report)

SYSTEMS = ("aevb", "aevb-b32", "aevb-mkl", "aevb-compile", "aevb-bf16", "aevb-fast", "aevb-stack4", "recipe", "pythae")
STACK = 4  # aevb-stack4: this many models (seeds 0..3) in one stacked step (aevb.batched)
ENV = {"aevb-mkl": {"AEVB_ONEDNN": "0"}}  # per-system environment of the child
N_TRAIN, BATCH = 60_000, 128
# forward + backward (x3) multiply-adds (x2) of the weight matrices 784x400, 400x(20+20), 20x400, 400x784
FLOP_PER_SAMPLE = 3 * 2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)


def matmul_gflops(n: int = 2048, reps: int = 10, device: str = "cpu") -> float:
    """The float32 GEMM rate this process reaches on ``device`` (the best of three timings)."""
    a = torch.randn(n, n, device=device)
    a @ a
    best = 0.0
    for _ in range(3):
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            a @ a
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, reps * 2 * n**3 / (time.perf_counter() - start))
    return best / 1e9


# --- children: one system each, one JSON line per epoch ------------------------------------------

def emit(**kw) -> None:
    print("RESULT " + json.dumps(kw), flush=True)


def aevb_config(system: str, epochs: int, device: str = "cpu"):
    from aevb.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from aevb.config import PRESETS
    from aevb.runconfig import apply_overrides

    cfg = RunConfig(model=ModelConfig(input_shape=(1, 28, 28), hidden=(400,), activation="relu", latent_dim=20),
                    data=DataConfig(dataset="mnist", binarize="dynamic", valid_size=0),
                    train=TrainConfig(epochs=epochs, batch_size=BATCH, optimizer="adam", lr=1e-3, seed=0, device=device))
    extra = {"aevb": {}, "aevb-b32": {"batch_size": 32}, "aevb-mkl": {}, "aevb-compile": {"compile": True}, "aevb-bf16": {"precision": "bf16"},
             "aevb-fast": dict(PRESETS["fast"])}[system]
    return apply_overrides(cfg, extra)


def run_aevb(system: str, epochs: int, target: float | None, device: str = "cpu") -> None:
    from aevb.config import RunConfig, TrainConfig
    from aevb.data import load_dataset
    from aevb.train import Trainer

    cfg = aevb_config(system, epochs, device)
    data = load_dataset(cfg.data)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", dataset=data, progress=False)
        for epoch in range(1, epochs + 1):
            trainer.config = RunConfig(cfg.model, cfg.data, TrainConfig(**{**cfg.train.__dict__, "epochs": epoch}))
            line = trainer.run()[-1]  # the test split is scored after each epoch (valid_size 0)
            emit(epoch=epoch, seconds=line["seconds"], compile_seconds=line.get("compile_seconds", 0.0),
                 test_elbo=line["test_elbo"], batch_size=cfg.train.batch_size)
            if target is not None and -line["test_elbo"] <= target:
                break


def run_stack(epochs: int) -> None:
    """aevb-stack4: STACK models of the benchmark's network in one stacked step, timed per epoch."""
    from aevb.batched import StackedOptimizer, StackedVAE, train_stacked
    from aevb.config import DataConfig
    from aevb.data import load_dataset
    from aevb.reproduce.common import build

    cfg = aevb_config("aevb", epochs)
    data = load_dataset(DataConfig(dataset="mnist", binarize="dynamic", valid_size=0))
    stack = StackedVAE([build(cfg.model, seed) for seed in range(STACK)])
    opt = StackedOptimizer(stack, "adam", [1e-3] * STACK)
    steps = N_TRAIN // BATCH
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_stacked(stack, data.train.x, "elbo", opt, steps, BATCH, seed=epoch, dynamic_binarize=True)
        emit(epoch=epoch, seconds=(time.perf_counter() - start) / STACK, batch_size=BATCH)


def run_recipe(epochs: int, target: float | None) -> None:
    from aevb.config import DataConfig
    from aevb.data import load_dataset

    data = load_dataset(DataConfig(dataset="mnist", binarize="dynamic", valid_size=0))
    torch.manual_seed(0)
    model = RecipeVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(BinarizedMNIST(data.train.x.view(-1, 784)), batch_size=BATCH, shuffle=True)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        recipe_epoch(model, opt, loader)
        seconds = time.perf_counter() - start
        elbo = recipe_test_elbo(model, data.test.x.view(-1, 784)) if target is not None else None
        emit(epoch=epoch, seconds=seconds, test_elbo=elbo, batch_size=BATCH)
        if target is not None and -elbo <= target:
            break


def pythae_model():
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.fc1, self.mu, self.log_var = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)

        def forward(self, x):
            h = F.relu(self.fc1(x.reshape(len(x), -1)))
            return ModelOutput(embedding=self.mu(h), log_covariance=self.log_var(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.fc4(F.relu(self.fc3(z)))).reshape(-1, 1, 28, 28))

    return VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce"),
               encoder=Encoder(), decoder=Decoder())


@torch.no_grad()
def pythae_test_elbo(model, x: torch.Tensor) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(x), 1000):
        batch = x[i : i + 1000]
        total += model({"data": batch}).loss.item() * len(batch)  # recon + KL, mean over the batch
    model.train()
    return -total / len(x)


def run_pythae(epochs: int, target: float | None) -> None:
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    from aevb.config import DataConfig
    from aevb.data import load_dataset

    data = load_dataset(DataConfig(dataset="mnist", binarize="dynamic", valid_size=0))
    train = torch.bernoulli(data.train.x, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = pythae_model()

    class Timer(TrainingCallback):
        def on_epoch_begin(self, training_config, **kw):
            self.start = time.perf_counter()

        def on_epoch_end(self, training_config, **kw):
            seconds = time.perf_counter() - self.start
            epoch = kw.get("epoch")
            elbo = pythae_test_elbo(model, data.test.x) if target is not None else None
            emit(epoch=epoch, seconds=seconds, test_elbo=elbo, batch_size=BATCH)
            if target is not None and -elbo <= target:
                raise StopIteration  # pythae has no early stop on a target: end the child here

    with tempfile.TemporaryDirectory() as tmp:
        cfg = BaseTrainerConfig(output_dir=tmp, num_epochs=epochs, learning_rate=1e-3,
                                per_device_train_batch_size=BATCH, no_cuda=True)
        try:
            TrainingPipeline(training_config=cfg, model=model)(train_data=train, callbacks=[Timer()])
        except StopIteration:
            pass


def child(args) -> None:
    torch.set_num_threads(args.threads)
    target = args.target if args.mode == "target" else None
    if args.system == "aevb-stack4":
        if target is not None:
            raise SystemExit("aevb-stack4 is timed in the speed mode only")
        run_stack(args.epochs)
    elif args.system.startswith("aevb"):
        run_aevb(args.system, args.epochs, target, args.device)
    elif args.system == "recipe":
        run_recipe(args.epochs, target)
    else:
        run_pythae(args.epochs, target)
    emit(peak_rss_mb=peak_rss_mb())


# --- parent ------------------------------------------------------------------------------------

def spawn(system: str, mode: str, epochs: int, threads: int, target: float, device: str = "cpu") -> list[dict]:
    cmd = [sys.executable, __file__, mode, "--child", "--system", system, "--epochs", str(epochs),
           "--threads", str(threads), "--target", str(target), "--device", device]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ENV.get(system, {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{system} failed:\n{proc.stderr[-3000:]}")
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def available(systems: list[str]) -> list[str]:
    try:
        import pythae  # noqa: F401
    except ImportError:
        print("pythae is not installed: skipping it (pip install pythae==0.1.2 --no-deps)", file=sys.stderr)
        return [s for s in systems if s != "pythae"]
    return systems


def speed(args) -> dict:
    gflops = [matmul_gflops(device=args.device)]
    epochs: dict[str, list[dict]] = {s: [] for s in args.systems}
    rss: dict[str, float] = {}
    compiled: dict[str, float] = {}  # the longest first-step compilation seen (excluded from the epoch times)
    for r in range(args.rounds):
        for system in args.systems:
            rows = spawn(system, "speed", args.epochs, args.threads, 0.0, args.device)
            rss[system] = max(rss.get(system, 0.0), rows[-1]["peak_rss_mb"])
            timed = [row for row in rows if "seconds" in row]
            compiled[system] = max([compiled.get(system, 0.0)] + [row.get("compile_seconds", 0.0) for row in timed])
            epochs[system] += timed[1:] if len(timed) > 1 else timed  # each child's first epoch warms up
            print(f"round {r + 1} {system:13s} " + " ".join(f"{row['seconds']:.2f}" for row in timed), flush=True)
    gflops.append(matmul_gflops(device=args.device))
    peak = max(gflops)
    floor = FLOP_PER_SAMPLE * N_TRAIN / (peak * 1e9)
    res: dict = {"matmul_gflops": [round(g, 1) for g in gflops], "floor_seconds_per_epoch": round(floor, 3),
                 "flop_per_sample": FLOP_PER_SAMPLE, "systems": {}}
    base = statistics.median(row["seconds"] for row in epochs["aevb"]) if "aevb" in epochs else None
    for system, rows in epochs.items():
        t = [row["seconds"] for row in rows]
        med = statistics.median(t)
        steps = N_TRAIN // rows[0]["batch_size"]
        res["systems"][system] = {
            "seconds_per_epoch": {"median": round(med, 3), "min": round(min(t), 3), "max": round(max(t), 3), "n": len(t)},
            "samples_per_second": round(steps * rows[0]["batch_size"] / med),
            "over_floor": round(med / floor, 2), "over_aevb": round(med / base, 2) if base else None,
            "peak_rss_mb": round(rss[system]), "batch_size": rows[0]["batch_size"],
            "compile_seconds": round(compiled[system], 2)}
    return res


def target(args) -> dict:
    res: dict = {"target_neg_elbo": args.target, "systems": {}}
    for system in args.systems:
        rows = spawn(system, "target", args.max_epochs, args.threads, args.target, args.device)
        timed = [row for row in rows if "seconds" in row]
        reached = -timed[-1]["test_elbo"] <= args.target
        train_s = sum(row["seconds"] for row in timed)
        compile_s = sum(row.get("compile_seconds", 0.0) for row in timed)
        res["systems"][system] = {"reached": reached, "epochs": len(timed), "train_seconds": round(train_s, 2),
                                  "compile_seconds": round(compile_s, 2),
                                  "final_test_elbo": round(timed[-1]["test_elbo"], 2),
                                  "batch_size": timed[0]["batch_size"], "peak_rss_mb": round(rows[-1]["peak_rss_mb"])}
        print(f"{system:13s} {'reached' if reached else 'did not reach'} -ELBO <= {args.target} after "
              f"{len(timed)} epochs, {train_s:.1f} s of training", flush=True)
    if "recipe" in res["systems"]:
        ref = res["systems"]["recipe"]["train_seconds"]
        for s in res["systems"].values():
            s["recipe_over_this"] = round(ref / (s["train_seconds"] + s["compile_seconds"]), 2)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", choices=["speed", "target"], default="speed")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2, help="speed: epochs per child (the first is warm-up)")
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--target", type=float, default=100.0, help="target: test -ELBO in nats")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", default="cpu", help="aevb's systems run here (cpu or cuda); recipe and pythae on the CPU")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return
    args.systems = available([s for s in args.systems.split(",") if s])
    unknown = sorted(set(args.systems) - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    if args.device != "cpu" and any(not s.startswith("aevb") for s in args.systems):
        raise SystemExit("--device cuda runs aevb's systems only (the recipe and pythae are timed on the CPU)")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": {"threads": args.threads, "cpus": os.cpu_count(),
              "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
              "torch": torch.__version__, "python": platform.python_version()}}
    result.update(speed(args) if args.mode == "speed" else target(args))
    report(result, args.json)


if __name__ == "__main__":
    main()
