"""Epoch time against the amount of work: batch size, latent size and hidden width.

For every setting, aevb's training step (Trainer.step: batch gather, dynamic binarization,
forward, backward, guard, fused Adam) is timed over a few hundred steps after a warm-up and
scaled to one epoch of 60,000 MNIST images. Beside it, the matmul floor of the same epoch
(the FLOPs of the weight matrices, 3 passes, at the GEMM rate measured in this process).
A ratio near 1 means the step is bound by arithmetic; a large one, by per-step overhead.

    python benchmarks/scaling_work.py --json docs/bench-scaling-work.json
    python benchmarks/scaling_work.py --precision bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import matmul_gflops  # noqa: E402  (the same GEMM-rate measurement)

from aevb.data import load_dataset
from aevb.train import Trainer
from aevb.runconfig import apply_overrides, default_config

N_TRAIN = 60_000


def flop_per_sample(hidden: int, latent: int) -> int:
    """Forward + backward (3 passes) of the MLP's weight matrices (encoder with mu and log-var heads)."""
    return 3 * 2 * (784 * hidden + hidden * 2 * latent + latent * hidden + hidden * 784)


def time_setting(data, batch: int, hidden: int, latent: int, precision: str, seconds: float) -> float:
    cfg = apply_overrides(default_config("mnist"), {"binarize": "dynamic", "valid_size": 0, "device": "cpu",
                                                   "batch_size": batch, "hidden": (hidden,), "latent_dim": latent,
                                                   "precision": precision, "lr": 1e-3})
    with tempfile.TemporaryDirectory() as tmp:
        t = Trainer(cfg, tmp, dataset=data, progress=False)
        perm = torch.randperm(N_TRAIN)
        steps = N_TRAIN // batch

        def run(n: int, offset: int = 0) -> None:
            for i in range(n):
                j = (offset + i) % steps
                t._accumulate(*t.step(t._batch(perm[j * batch : (j + 1) * batch])))

        run(min(10, steps))
        start = time.perf_counter()
        run(1)
        one = time.perf_counter() - start
        n = max(5, min(steps, int(seconds / max(one, 1e-5))))
        start = time.perf_counter()
        run(n, 1)
        float(t.sums["_steps"])  # wait for the last step
        per_step = (time.perf_counter() - start) / n
    return per_step * steps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="32,64,128,256,512,1024,2048,4096")
    ap.add_argument("--latents", default="2,20,100,400")
    ap.add_argument("--widths", default="100,400,1000,2000")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--seconds", type=float, default=1.5, help="time measured per setting")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    data = load_dataset(apply_overrides(default_config("mnist"), {"binarize": "dynamic", "valid_size": 0}).data)
    gflops = matmul_gflops()
    rows = []
    settings = ([("batch", b, 400, 20) for b in map(int, args.batches.split(","))]
                + [("latent", 128, 400, z) for z in map(int, args.latents.split(","))]
                + [("width", 128, h, 20) for h in map(int, args.widths.split(","))])
    for axis, batch, hidden, latent in settings:
        epoch = time_setting(data, batch, hidden, latent, args.precision, args.seconds)
        floor = flop_per_sample(hidden, latent) * N_TRAIN / (gflops * 1e9)
        row = {"axis": axis, "batch_size": batch, "hidden": hidden, "latent": latent, "precision": args.precision,
               "seconds_per_epoch": round(epoch, 3), "floor_seconds": round(floor, 3),
               "over_floor": round(epoch / floor, 2), "samples_per_second": round(N_TRAIN / epoch)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    gflops = max(gflops, matmul_gflops())
    result = {"date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "matmul_gflops": round(gflops, 1), "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
