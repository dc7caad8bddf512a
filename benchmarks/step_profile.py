"""Where one training step of the MNIST 784-400-20 model spends its time, next to the matmul floor.

    AEVB_DATA_DIR=../shared/data python benchmarks/step_profile.py
"""
import math
import tempfile
import time

import torch

from aevb.train import Trainer, apply_overrides, default_config
cfg = apply_overrides(default_config("mnist"), {"binarize": "dynamic", "batch_size": 128, "valid_size": 0, "device": "cpu"})
t = Trainer(cfg, tempfile.mkdtemp(), progress=False)
perm = torch.randperm(60000)
def bench(label, fn, n=200):
    for i in range(20): fn(i)
    s = time.perf_counter()
    for i in range(n): fn(i)
    dt = (time.perf_counter() - s) / n
    print(f"{label:40s} {dt*1e3:.3f} ms/step  -> {dt*60000/128:.2f} s/epoch", flush=True)
def full(i):
    x = t._batch(perm[(i%400)*128:(i%400+1)*128]); t._accumulate(*t.step(x))
bench("full step (batch+step+accumulate)", full)
x = t._batch(perm[:128])
bench("step only", lambda i: t.step(x))
def fwd(i):
    with torch.no_grad(): t.step_module(x, t.noise)
bench("forward only (no grad)", fwd)
def fb(i):
    terms = t.step_module(x, t.noise); t.optimizer.zero_grad(); terms["loss"].backward()
bench("forward+backward", fb)
bench("optimizer.step (adam foreach)", lambda i: t.optimizer.step())
opt2 = torch.optim.Adam(t.model.parameters(), lr=1e-3, fused=True)
terms = t.step_module(x, t.noise); terms["loss"].backward()
bench("optimizer.step (adam fused)", lambda i: opt2.step())
bench("clip_grad_norm inf + float", lambda i: float(torch.nn.utils.clip_grad_norm_(t.model.parameters(), math.inf)))
bench("batch gather+bernoulli", lambda i: t._batch(perm[(i%400)*128:(i%400+1)*128]))
a = torch.randn(128, 784); w = torch.randn(784, 400)
bench("matmul 128x784x400", lambda i: a @ w)
# floor: 3 passes (fwd, 2x bwd) of the 4 big gemms
flops = 2*128*(784*400 + 400*40 + 20*400 + 400*784) * 3
A = torch.randn(4096, 4096); s=time.perf_counter(); [A@A for _ in range(5)]; g = 5*2*4096**3/(time.perf_counter()-s)
print(f"matmul peak {g/1e9:.0f} GFLOP/s; floor per step {flops/g*1e3:.3f} ms -> {flops/g*60000/128:.2f} s/epoch")
