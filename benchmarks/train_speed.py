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

Systems: aevb (fp32, eager; the trainer takes the hand-written ELBO step of ``aevb.fastpath``), aevb-autograd
(the same through autograd: AEVB_FASTPATH=0), aevb-b32 and aevb-b32-autograd (both at batch 32), aevb-mkl (the same with AEVB_ONEDNN=0: every layer through
PyTorch's own linear instead of oneDNN, see aevb.nets.dense), aevb-compile (``--compile``), aevb-bf16 (bf16 autocast),
aevb-fast (the ``fast`` preset: see aevb.config.PRESETS), recipe (pytorch/examples/vae
as written there: per-item Dataset + DataLoader, ``.item()`` every step) and pythae
(0.1.2's TrainingPipeline with the same networks; skipped when pythae is not installed:
``pip install pythae==0.1.2 --no-deps``). pythae has no dynamic binarization, so it trains
on one fixed binarization of the training set. aevb-stack4 trains 4 models (initialised with seeds
0-3, one data order, each its own binarization and noise) in one stacked step (``aevb.batched``, the
loop of ``aevb reproduce``; fused Adam per model), the way a sweep over seeds or settings runs; its
``seconds`` are per model (the stack's epoch / 4), so its ratios compare the cost of one model's epoch.

The zoo systems (zoo-planar, zoo-iaf, zoo-vamp, zoo-2l: rows planar-10, iaf, vamp and vae-2l of
``aevb.reproduce.zoo``; hvae: ``aevb.reproduce.hvae.RECIPES["mnist"]``) train their own model at their paper's
batch size for ``--zoo-steps`` steps after 10 of warm-up (an epoch of them would take minutes), reported as
seconds per 60,000 images; each has its own floor, the FLOPs of its step's matrix products as
``torch.utils.flop_counter`` counts them on the autograd path (the VampPrior's pseudo-inputs, the flows' and
the second layer's networks included) at the run's matmul rate.

Every child reports wall seconds (``seconds``) and the CPU seconds of its process over the same steps
(``cpu_seconds``, ``time.process_time``, evaluation excluded): on a loaded machine the CPU seconds move far
less with the load than the wall seconds do, so the report gives ratios of both.
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

ZOO = {"zoo-planar": "planar-10", "zoo-iaf": "iaf", "zoo-vamp": "vamp", "zoo-2l": "vae-2l", "hvae": None}
SYSTEMS = ("aevb", "aevb-autograd", "aevb-b32", "aevb-b32-autograd", "aevb-mkl", "aevb-compile", "aevb-bf16", "aevb-fast",
           "aevb-stack4", "recipe", "pythae", *ZOO)
STACK = 4  # aevb-stack4: this many models (seeds 0..3) in one stacked step (aevb.batched)
AUTOGRAD = {"AEVB_FASTPATH": "0"}
ENV = {"aevb-mkl": {"AEVB_ONEDNN": "0"}, "aevb-autograd": AUTOGRAD, "aevb-b32-autograd": AUTOGRAD}  # per-system environment
N_TRAIN, BATCH = 60_000, 128
# forward + backward (x3) multiply-adds (x2) of the weight matrices 784x400, 400x(20+20), 20x400, 400x784
FLOP_PER_SAMPLE = 3 * 2 * (784 * 400 + 400 * 40 + 20 * 400 + 400 * 784)


def matmul_gflops(n: int = 2048, reps: int = 10, device: str = "cpu", clock=time.perf_counter) -> float:
    """The float32 GEMM rate this process reaches on ``device`` (the best of three timings) by ``clock``
    (``time.process_time``: per CPU second of this process)."""
    a = torch.randn(n, n, device=device)
    a @ a
    best = 0.0
    for _ in range(3):
        if device != "cpu":
            torch.cuda.synchronize()
        start = clock()
        for _ in range(reps):
            a @ a
        if device != "cpu":
            torch.cuda.synchronize()
        best = max(best, reps * 2 * n**3 / (clock() - start))
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
    extra = {"aevb": {}, "aevb-autograd": {}, "aevb-b32": {"batch_size": 32}, "aevb-b32-autograd": {"batch_size": 32},
             "aevb-mkl": {}, "aevb-compile": {"compile": True}, "aevb-bf16": {"precision": "bf16"},
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
        validate, in_validation = trainer._validate, [0.0]

        def timed_validate():  # the CPU time of the evaluation, subtracted from the epoch's
            start = time.process_time()
            try:
                return validate()
            finally:
                in_validation[0] += time.process_time() - start

        trainer._validate = timed_validate
        for epoch in range(1, epochs + 1):
            trainer.config = RunConfig(cfg.model, cfg.data, TrainConfig(**{**cfg.train.__dict__, "epochs": epoch}))
            in_validation[0], cpu = 0.0, time.process_time()
            line = trainer.run()[-1]  # the test split is scored after each epoch (valid_size 0)
            cpu = time.process_time() - cpu - in_validation[0]
            emit(epoch=epoch, seconds=line["seconds"], cpu_seconds=cpu, compile_seconds=line.get("compile_seconds", 0.0),
                 test_elbo=line["test_elbo"], batch_size=cfg.train.batch_size,
                 fast_path=trainer.fast_step is not None)
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
        start, cpu = time.perf_counter(), time.process_time()
        train_stacked(stack, data.train.x, "elbo", opt, steps, BATCH, seed=epoch, dynamic_binarize=True)
        emit(epoch=epoch, seconds=(time.perf_counter() - start) / STACK, cpu_seconds=(time.process_time() - cpu) / STACK,
             batch_size=BATCH)


def run_recipe(epochs: int, target: float | None) -> None:
    from aevb.config import DataConfig
    from aevb.data import load_dataset

    data = load_dataset(DataConfig(dataset="mnist", binarize="dynamic", valid_size=0))
    torch.manual_seed(0)
    model = RecipeVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(BinarizedMNIST(data.train.x.view(-1, 784)), batch_size=BATCH, shuffle=True)
    for epoch in range(1, epochs + 1):
        start, cpu = time.perf_counter(), time.process_time()
        recipe_epoch(model, opt, loader)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        elbo = recipe_test_elbo(model, data.test.x.view(-1, 784)) if target is not None else None
        emit(epoch=epoch, seconds=seconds, cpu_seconds=cpu, test_elbo=elbo, batch_size=BATCH)
        if target is not None and -elbo <= target:
            break


def zoo_config(system: str):
    """The run configuration of a zoo system: its row's (or the hierarchy's recipe) on dynamically binarized MNIST."""
    from aevb.runconfig import apply_overrides, default_config

    if ZOO[system] is None:
        from aevb.reproduce.hvae import RECIPES

        return apply_overrides(default_config("mnist"), {**RECIPES["mnist"], "device": "cpu", "valid_size": 0})
    from aevb.reproduce.zoo import ROWS, row_config

    row = next(r for r in ROWS if r.name == ZOO[system])
    cfg = row_config(row, N_TRAIN, device="cpu")
    return apply_overrides(cfg, {"dataset": "mnist", "binarize": "dynamic", "valid_size": 0})


def step_flops(trainer, x: torch.Tensor) -> int:
    """The FLOPs of the matrix products of one training step (forward and backward, through autograd, every layer
    through PyTorch's own linear so that the counter sees it)."""
    from torch.utils.flop_counter import FlopCounterMode

    from aevb import nets

    before, nets.ONEDNN = nets.ONEDNN, False
    try:
        with FlopCounterMode(display=False) as counter:
            terms = trainer.step_module(x, trainer.noise, beta=1.0)
            torch.autograd.grad(terms["loss"], trainer.params, allow_unused=True)
    finally:
        nets.ONEDNN = before
    return counter.get_total_flops()


def run_zoo(system: str, steps: int, warm: int = 10) -> None:
    """A zoo system: ``steps`` timed training steps after ``warm``, and its step's FLOPs."""
    from aevb.data import load_dataset
    from aevb.train import Trainer

    cfg = zoo_config(system)
    data = load_dataset(cfg.data)
    marks: list[tuple[float, float]] = []

    def mark() -> bool:  # asked after every step
        marks.append((time.perf_counter(), time.process_time()))
        return len(marks) >= warm + steps

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", dataset=data, progress=False)
        trainer.run(stop_when=mark)
        batch = cfg.train.batch_size
        per_epoch = (N_TRAIN // batch) / steps  # the timed steps' seconds, scaled to an epoch of 60,000 images
        (w0, c0), (w1, c1) = marks[warm - 1], marks[-1]
        flops = step_flops(trainer, trainer._batch(torch.arange(batch)))
        emit(epoch=1, seconds=(w1 - w0) * per_epoch, cpu_seconds=(c1 - c0) * per_epoch, batch_size=batch,
             flop_per_sample=flops / batch, fast_path=trainer.fast_step is not None, steps=steps)


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
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, training_config, **kw):
            seconds, cpu = time.perf_counter() - self.start, time.process_time() - self.cpu
            epoch = kw.get("epoch")
            elbo = pythae_test_elbo(model, data.test.x) if target is not None else None
            emit(epoch=epoch, seconds=seconds, cpu_seconds=cpu, test_elbo=elbo, batch_size=BATCH)
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
    if args.system in ZOO:
        if target is not None:
            raise SystemExit("the zoo systems are timed in the speed mode only")
        run_zoo(args.system, args.zoo_steps)
    elif args.system == "aevb-stack4":
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

def spawn(system: str, mode: str, epochs: int, threads: int, target: float, device: str = "cpu",
          zoo_steps: int = 100) -> list[dict]:
    cmd = [sys.executable, __file__, mode, "--child", "--system", system, "--epochs", str(epochs),
           "--threads", str(threads), "--target", str(target), "--device", device, "--zoo-steps", str(zoo_steps)]
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
    cpu_gflops = [matmul_gflops(device=args.device, clock=time.process_time)] if args.device == "cpu" else []
    epochs: dict[str, list[dict]] = {s: [] for s in args.systems}
    rss: dict[str, float] = {}
    compiled: dict[str, float] = {}  # the longest first-step compilation seen (excluded from the epoch times)
    loads = [round(os.getloadavg()[0], 1)]
    for r in range(args.rounds):
        for system in args.systems:
            rows = spawn(system, "speed", args.epochs, args.threads, 0.0, args.device, args.zoo_steps)
            rss[system] = max(rss.get(system, 0.0), rows[-1]["peak_rss_mb"])
            timed = [row for row in rows if "seconds" in row]
            compiled[system] = max([compiled.get(system, 0.0)] + [row.get("compile_seconds", 0.0) for row in timed])
            epochs[system] += timed[1:] if len(timed) > 1 else timed  # each child's first epoch warms up
            loads.append(round(os.getloadavg()[0], 1))
            print(f"round {r + 1} {system:17s} " + " ".join(f"{row['seconds']:.2f}/{row['cpu_seconds']:.2f}"
                                                            for row in timed) + f" s (wall/CPU), load {loads[-1]}",
                  flush=True)
    gflops.append(matmul_gflops(device=args.device))
    if cpu_gflops:
        cpu_gflops.append(matmul_gflops(device=args.device, clock=time.process_time))
    peak = max(gflops)
    cpu_peak = max(cpu_gflops) if cpu_gflops else peak
    floor = FLOP_PER_SAMPLE * N_TRAIN / (peak * 1e9)
    res: dict = {"matmul_gflops": [round(g, 1) for g in gflops], "floor_seconds_per_epoch": round(floor, 3),
                 "matmul_gflops_per_cpu_second": [round(g, 1) for g in cpu_gflops],
                 "cpu_floor_seconds_per_epoch": round(FLOP_PER_SAMPLE * N_TRAIN / (cpu_peak * 1e9), 3),
                 "flop_per_sample": FLOP_PER_SAMPLE, "load_average": {"min": min(loads), "max": max(loads)},
                 "systems": {}}
    medians = {s: {k: statistics.median(row[k] for row in rows) for k in ("seconds", "cpu_seconds")}
               for s, rows in epochs.items()}
    for system, rows in epochs.items():
        t = [row["seconds"] for row in rows]
        med, cpu = medians[system]["seconds"], medians[system]["cpu_seconds"]
        steps = N_TRAIN // rows[0]["batch_size"]
        own = rows[0].get("flop_per_sample")  # a zoo system's own floor
        flop = FLOP_PER_SAMPLE if own is None else own
        sys_floor, cpu_floor = flop * N_TRAIN / (peak * 1e9), flop * N_TRAIN / (cpu_peak * 1e9)
        res["systems"][system] = {
            "seconds_per_epoch": {"median": round(med, 3), "min": round(min(t), 3), "max": round(max(t), 3), "n": len(t)},
            "cpu_seconds_per_epoch": round(cpu, 3),
            "samples_per_second": round(steps * rows[0]["batch_size"] / med),
            "over_floor": round(med / sys_floor, 2), "cpu_over_floor": round(cpu / cpu_floor, 2),
            "peak_rss_mb": round(rss[system]), "batch_size": rows[0]["batch_size"],
            "compile_seconds": round(compiled[system], 2), "fast_path": rows[0].get("fast_path")}
        if own is not None:
            res["systems"][system].update(flop_per_sample=round(own), floor_seconds_per_epoch=round(sys_floor, 3),
                                          cpu_floor_seconds_per_epoch=round(cpu_floor, 3))
        for ref in ("aevb", "aevb-autograd", "recipe"):  # this system's time over the reference's, wall and CPU
            if ref in medians and own is None:
                res["systems"][system][f"over_{ref.replace('-', '_')}"] = round(med / medians[ref]["seconds"], 2)
                res["systems"][system][f"cpu_over_{ref.replace('-', '_')}"] = round(cpu / medians[ref]["cpu_seconds"], 2)
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
    ap.add_argument("--zoo-steps", type=int, default=100, help="speed: timed steps of each zoo system")
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
