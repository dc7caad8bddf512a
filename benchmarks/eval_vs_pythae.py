"""Importance-sampled log p(x): aevb's ``log_likelihood`` against pythae 0.1.2's ``VAE.get_nll``.

Same networks (pythae's VAE wraps aevb's own encoder and decoder modules, so the weights are
identical), same K, same images, timed in one process. Throughput is images x samples per
second. The FLOP floor is the time the decoder passes alone would take at the matmul rate this
machine reaches in the same process (a large float32 GEMM, same thread count).

    PYTHONPATH=src python benchmarks/eval_vs_pythae.py --images 20 --k 1000 --threads 1

Exits 0 with a message when pythae is not installed (``pip install pythae==0.1.2 --no-deps``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch


def matmul_flops_per_s(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def decoder_flops(cfg) -> int:
    """Multiply-adds x 2 of one decoder pass (one z), the likelihood's elementwise work ignored."""
    sizes = [cfg.latent_dim, *reversed(cfg.hidden), cfg.data_dim]
    flops = sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    if cfg.likelihood == "gaussian":
        flops += 2 * sizes[-2] * cfg.data_dim
    return flops


def pythae_model(model):
    """A pythae VAE whose encoder and decoder are aevb's modules (weights shared)."""
    from pythae.models import VAE as PVAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Enc(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = model.encoder

        def forward(self, x):
            out = self.net(x)
            return ModelOutput(embedding=out["mu"], log_covariance=out["log_var"])

    class Dec(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = model.decoder

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z).mean)

    cfg = VAEConfig(input_dim=tuple(model.config.input_shape), latent_dim=model.config.latent_dim,
                    reconstruction_loss="bce")
    return PVAE(cfg, encoder=Enc(), decoder=Dec()).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--latent-dim", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=20, help="aevb: images per batch")
    ap.add_argument("--chunk", type=int, default=250, help="aevb: samples decoded at once per image")
    ap.add_argument("--run", help="evaluate this run directory's model instead of a fresh one")
    args = ap.parse_args(argv)
    try:
        import pythae  # noqa: F401
    except ImportError:
        print("pythae is not installed: skipping (pip install pythae==0.1.2 --no-deps)")
        return 0
    from aevb.config import ModelConfig
    from aevb.evaluate import log_likelihood
    from aevb.model import VAE

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.run:
        from aevb.checkpoint import load

        run = load(args.run)
        model, x = run.model.eval(), run.dataset().test.x[: args.images]
    else:
        model = VAE(ModelConfig(hidden=(args.hidden,), activation="tanh", latent_dim=args.latent_dim)).eval()
        x = torch.rand(args.images, 1, 28, 28).bernoulli()
    pmodel = pythae_model(model)
    work = args.images * args.k
    with torch.no_grad():
        t = time.perf_counter()
        ours = log_likelihood(model, x, k=args.k, batch_size=args.batch_size, chunk=args.chunk).mean().item()
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        theirs = float(pmodel.get_nll(x, n_samples=args.k, batch_size=100))  # returns the mean log p(x)
        t_theirs = time.perf_counter() - t
    peak = matmul_flops_per_s()
    floor = work * decoder_flops(model.config) / peak
    res = {"images": args.images, "k": args.k, "threads": args.threads, "arch": f"784-{args.hidden}-{args.latent_dim}",
           "aevb_seconds": round(t_ours, 3), "pythae_seconds": round(t_theirs, 3),
           "aevb_images_x_samples_per_s": round(work / t_ours), "pythae_images_x_samples_per_s": round(work / t_theirs),
           "speedup": round(t_theirs / t_ours, 2), "aevb_log_px": round(ours, 3), "pythae_log_px": round(theirs, 3),
           "matmul_gflops": round(peak / 1e9, 1), "decoder_flop_floor_seconds": round(floor, 3),
           "aevb_over_floor": round(t_ours / floor, 2)}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
