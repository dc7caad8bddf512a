"""Where one training step of the MNIST 784-400-20 model spends its time, next to the matmul floor.

    AEVB_DATA_DIR=../shared/data python benchmarks/step_profile.py [--batch 32] [--profile]

``--profile`` adds torch.profiler's table of one step's operators (self CPU time, 50 steps).
"""
import argparse
import tempfile
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--profile", action="store_true")
ap.add_argument("--rows", type=int, default=25)
args = ap.parse_args()
B = args.batch

from aevb.train import Trainer
from aevb.runconfig import apply_overrides, default_config
cfg = apply_overrides(default_config("mnist"), {"binarize": "dynamic", "batch_size": B, "valid_size": 0, "device": "cpu",
                                              "hidden": (400,), "latent_dim": 20, "activation": "relu", "optimizer": "adam", "lr": 1e-3})
t = Trainer(cfg, tempfile.mkdtemp(), progress=False)
perm = torch.randperm(60000)
def bench(label, fn, n=200):
    for i in range(20): fn(i)
    s = time.perf_counter()
    for i in range(n): fn(i)
    dt = (time.perf_counter() - s) / n
    print(f"{label:40s} {dt*1e3:.3f} ms/step  -> {dt*60000/B:.2f} s/epoch", flush=True)
def full(i):
    x = t._batch(perm[(i%(60000//B))*B:(i%(60000//B)+1)*B]); t._accumulate(*t.step(x))
bench("full step (batch+step+accumulate)", full)
x = t._batch(perm[:B])
bench("step only", lambda i: t.step(x))
def fwd(i):
    with torch.no_grad(): t.step_module(x, t.noise)
bench("forward only (no grad)", fwd)
def fb(i):
    terms = t.step_module(x, t.noise); t.optimizer.zero_grad(); terms["loss"].backward()
bench("forward+backward", fb)
terms = t.step_module(x, t.noise); terms["loss"].backward()
bench("optimizer.step (adam fused)", lambda i: t.optimizer.step())
opt2 = torch.optim.Adam(t.model.parameters(), lr=1e-3, foreach=True)
bench("optimizer.step (adam foreach)", lambda i: opt2.step())
bench("guard: total gradient norm (no sync)", lambda i: torch.nn.utils.get_total_norm([p.grad for p in t.params]))
bench("batch gather + binarization", lambda i: t._batch(perm[(i%(60000//B))*B:(i%(60000//B)+1)*B]))
a = torch.randn(B, 784); w = torch.randn(784, 400)
bench(f"matmul {B}x784x400", lambda i: a @ w)
# floor: 3 passes (fwd, 2x bwd) of the 4 big gemms
flops = 2*B*(784*400 + 400*40 + 20*400 + 400*784) * 3
A = torch.randn(4096, 4096); s=time.perf_counter(); [A@A for _ in range(5)]; g = 5*2*4096**3/(time.perf_counter()-s)
print(f"matmul peak {g/1e9:.0f} GFLOP/s; floor per step {flops/g*1e3:.3f} ms -> {flops/g*60000/B:.2f} s/epoch")

# The GEMMs of one step alone, at this batch size (forward; backward: grad of the weights, and
# of the inputs except the data's): what MKL's float32 GEMMs cost at these shapes.
shapes = [(784, 400), (400, 40), (20, 400), (400, 784)]  # (in, out) of each weight matrix
ins = {i: torch.randn(B, i) for i, _ in shapes}
ws = {(i, o): torch.randn(o, i) for i, o in shapes}
gs = {o: torch.randn(B, o) for _, o in shapes}
def gemms(_):
    for k, (i, o) in enumerate(shapes):
        ins[i] @ ws[(i, o)].t()           # forward
        gs[o].t() @ ins[i]                # grad of the weight
        if k:                             # grad of the input (not for the data)
            gs[o] @ ws[(i, o)]
t_gemm = None
for _ in range(3):
    s = time.perf_counter(); [gemms(0) for _ in range(200)]; dt = (time.perf_counter() - s) / 200
    t_gemm = dt if t_gemm is None else min(t_gemm, dt)
print(f"{'GEMMs of one step alone':40s} {t_gemm*1e3:.3f} ms/step  -> {t_gemm*60000/B:.2f} s/epoch "
      f"({flops/t_gemm/1e9:.0f} GFLOP/s; {t_gemm/(flops/g):.2f}x the floor)")

if args.profile:
    from torch.profiler import ProfilerActivity, profile
    for i in range(20): full(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(50): full(i)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
