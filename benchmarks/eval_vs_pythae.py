"""Importance-sampled log p(x): aevb's ``log_likelihood`` against pythae 0.1.2's ``VAE.get_nll``.

One command measures, in one run, each side in its own child process (so each has its own peak RSS):

- the FLOP floor: the float32 GEMM rate of this machine at the same thread count, a 1024^3
  ``torch.matmul`` (MKL's sgemm in the CPU wheels), measured right before and right after every
  timed section, the faster of the two taken; and the same for oneDNN's float32 GEMM
  (``torch.ops.mkldnn._linear_pointwise``, which aevb uses on CPUs) on 1024^3 and on the decoder's
  last layer (1024 rows), which on the AMD CPU we measured run 2-3x faster than MKL's.
  ``*_over_floor`` divides by the torch.matmul floor (as the issue defines it),
  ``*_over_best_floor`` by the fastest of the three;
- the FLOPs of one decoder pass (one z) and one encoder pass (one image), counted by
  ``torch.utils.flop_counter`` on the model itself;
- aevb: time, images x samples per second, time / floor, where floor = images x K x decoder FLOPs
  / GEMM rate (aevb encodes each image once, a further images x encoder FLOPs, reported apart);
- pythae ``get_nll(x, n_samples=K, batch_size=100)`` (its defaults but K): the same, on the same
  network (pythae's VAE wraps aevb's own encoder and decoder modules, so the weights are
  identical) and the first ``--pythae-images`` of the same images with ``--pythae-k`` samples
  (default: all of them, the same K). pythae re-encodes the image for every sample, so its work
  is images x K x (encoder + decoder) FLOPs;
- the ratios: throughput (images x samples per second) aevb / pythae, the same ratio with each
  side's time divided by its own floor (robust to the load changing between the two phases), and
  the bound on that ratio if aevb ran exactly at its floor.

    PYTHONPATH=src python benchmarks/eval_vs_pythae.py --run runs/mnist-500-20 --images 100 --k 5000
    PYTHONPATH=src python benchmarks/eval_vs_pythae.py --full --run runs/mnist-500-20 --k 5000   # aevb alone

``--full`` evaluates aevb alone on the whole test split (or ``--images``) in slices of
``--slice`` images, with a GEMM measurement between slices, and extrapolates to 10,000 images
when fewer were evaluated. Without ``--run`` a fresh (untrained) 784-500-20 tanh VAE is timed on
random binary images. Exits 0 with a message when pythae is not installed
(``pip install pythae==0.1.2 --no-deps``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

FULL_TEST_IMAGES = 10_000


def gemm_flops_per_s(backend: str = "torch", m: int = 1024, k: int = 1024, n: int = 1024, repeats: int = 4,
                     trials: int = 3) -> float:
    """The float32 rate of an (m, k) x (k, n) product this process reaches now (the best of ``trials``
    timings of ``repeats`` products), through torch.matmul or oneDNN's linear (0 when this torch has none)."""
    a = torch.randn(m, k)
    if backend == "onednn":
        from aevb.importance import onednn_linear_works

        if not onednn_linear_works():
            return 0.0
        w = torch.randn(n, k)
        mm = lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")  # noqa: E731
    else:
        b = torch.randn(k, n)
        mm = lambda: a @ b  # noqa: E731
    mm()
    best = math.inf
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(repeats):
            mm()
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n * repeats / best


def decoder_out_layer(model) -> tuple[int, int] | None:
    """(inputs, outputs) of an MLP decoder's last layer, the GEMM that dominates its FLOPs."""
    mean = getattr(model.decoder, "mean", None)
    return (mean.in_features, mean.out_features) if isinstance(mean, torch.nn.Linear) else None


def gemm_rates(layer: tuple[int, int] | None = None) -> dict[str, float]:
    """torch.matmul and oneDNN on 1024^3, and oneDNN on the decoder's last layer for 1024 rows
    (on the CPU we measured, oneDNN runs that shape faster than the square)."""
    rates = {backend: gemm_flops_per_s(backend) for backend in ("torch", "onednn")}
    if layer is not None:
        rates["onednn_layer"] = gemm_flops_per_s("onednn", 1024, *layer)
    return rates


def timed_against_gemm(fn, layer: tuple[int, int] | None = None):
    """Run fn once between two GEMM-rate measurements: (result, seconds, {backend: the faster rate})."""
    before = gemm_rates(layer)
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    after = gemm_rates(layer)
    return result, seconds, {b: max(before[b], after[b]) for b in before}


def pass_flops(model) -> tuple[int, int]:
    """FLOPs of one decoder pass (one z) and of one encoder pass (one image), as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    with torch.no_grad():
        with FlopCounterMode(display=False) as dec:
            model.decode(torch.zeros(1, model.config.latent_dim, dtype=param.dtype))
        with FlopCounterMode(display=False) as enc:
            model.encode(torch.zeros(1, *model.config.input_shape, dtype=param.dtype))
    return dec.get_total_flops(), enc.get_total_flops()


def model_and_images(args):
    """The run's model and test images (``--run``), or a fresh 784-500-20 tanh VAE and random binary images."""
    from aevb.config import ModelConfig
    from aevb.models import VAE

    torch.manual_seed(0)
    if args.run:
        from aevb.run import load

        run = load(args.run)
        x = run.dataset(args.data_dir).test.x
        return run.model.eval(), (x[: args.images] if args.images else x), args.run
    model = VAE(ModelConfig(hidden=(args.hidden,), activation="tanh", latent_dim=args.latent_dim)).eval()
    n = args.images or 20
    return model, torch.rand(n, 1, 28, 28).bernoulli(), f"fresh 784-{args.hidden}-{args.latent_dim} tanh VAE"


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


def floor_fields(prefix: str, seconds: float, work_flops: float, gemm: dict[str, float], samples: int) -> dict:
    floor, best = work_flops / gemm["torch"], work_flops / max(gemm.values())
    return {f"{prefix}_seconds": round(seconds, 3), f"{prefix}_images_x_samples_per_s": round(samples / seconds),
            f"{prefix}_matmul_gflops": round(gemm["torch"] / 1e9, 1),
            f"{prefix}_onednn_gflops": round(gemm["onednn"] / 1e9, 1),
            f"{prefix}_onednn_layer_gflops": round(gemm.get("onednn_layer", 0.0) / 1e9, 1),
            f"{prefix}_floor_seconds": round(floor, 3), f"{prefix}_over_floor": round(seconds / floor, 3),
            f"{prefix}_best_floor_seconds": round(best, 3), f"{prefix}_over_best_floor": round(seconds / best, 3)}


def _status_mib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith(key))


def rss_mib() -> int:
    """This process's resident set size now (Linux)."""
    return _status_mib("VmRSS:")


def start_rss_window() -> int:
    """Reset the peak-RSS mark (Linux: write 5 to /proc/self/clear_refs) so that ``window_peak_mib``
    sees only what follows, not the data loading before; returns the RSS now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mib()


def window_peak_mib() -> int:
    return _status_mib("VmHWM:")


def reference_log_likelihood(model, x, k: int, batch_size: int, chunk: int | None):
    """The straightforward computation aevb used before: ``objectives.iwae_bound`` per batch of images,
    each image's samples decoded ``chunk`` at a time through the model's own ``log_prob``."""
    from aevb.objectives import iwae_bound

    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return torch.cat([iwae_bound(model, x[i : i + batch_size], k, generator=gen, chunk=min(chunk or 500, k),
                                     reduction="none")["iwae"].double() for i in range(0, len(x), batch_size)])


def phase_aevb(args) -> dict:
    """aevb's log_likelihood on the images, ``--repeats`` times; the median run is reported."""
    from aevb.evaluate import log_likelihood

    model, x, _ = model_and_images(args)
    dec, enc = pass_flops(model)
    kw = dict(k=args.k, batch_size=args.batch_size, chunk=args.chunk, max_chunk_bytes=int(args.chunk_mib * 2**20),
              fast=args.path == "fast", gemm=args.gemm)
    baseline = start_rss_window()
    if args.path == "reference":
        evaluate = lambda: reference_log_likelihood(model, x, args.k, args.batch_size, args.chunk)  # noqa: E731
    else:
        evaluate = lambda: log_likelihood(model, x, **kw)  # noqa: E731
    runs = [timed_against_gemm(evaluate, decoder_out_layer(model)) for _ in range(args.repeats)]
    work = len(x) * args.k * dec
    over_floor = [s / (work / g["torch"]) for _, s, g in runs]
    ll, seconds, gemm = runs[sorted(range(len(runs)), key=over_floor.__getitem__)[len(runs) // 2]]  # the median
    res = floor_fields("aevb", seconds, work, gemm, len(x) * args.k)
    res.update(aevb_images=len(x), aevb_k=args.k, aevb_log_px=round(ll.mean().item(), 3),
               aevb_over_floor_all_repeats=[round(r, 3) for r in over_floor],
               aevb_over_best_floor_all_repeats=[round(s / (work / max(g.values())), 3) for _, s, g in runs],
               aevb_encoder_flops_share=round(enc / (args.k * dec), 5), aevb_rss_before_mib=baseline,
               aevb_rss_peak_while_evaluating_mib=window_peak_mib())
    return res


def phase_pythae(args) -> dict:
    """pythae's get_nll with its default batch_size (100) on the first --pythae-images images."""
    model, x, _ = model_and_images(args)
    n, k = args.pythae_images or len(x), args.pythae_k or args.k
    x = x[:n]
    dec, enc = pass_flops(model)
    pmodel = pythae_model(model)
    baseline = start_rss_window()
    torch.manual_seed(args.seed)
    with torch.no_grad():
        log_px, seconds, gemm = timed_against_gemm(lambda: float(pmodel.get_nll(x, n_samples=k, batch_size=100)),
                                                   decoder_out_layer(model))
    res = floor_fields("pythae", seconds, n * k * dec, gemm, n * k)
    res.update(pythae_images=n, pythae_k=k, pythae_log_px=round(log_px, 3),  # get_nll returns the mean log p(x)
               pythae_over_its_own_flops=round(seconds / (n * k * (dec + enc) / gemm["torch"]), 3),
               pythae_rss_before_mib=baseline, pythae_rss_peak_while_evaluating_mib=window_peak_mib())
    return res


def phase_full(args) -> dict:
    """aevb alone on the test split, in slices with a GEMM measurement around each one."""
    from aevb.importance import importance_log_likelihood

    model, x, _ = model_and_images(args)
    dec, _ = pass_flops(model)
    gen = torch.Generator().manual_seed(args.seed)
    baseline = start_rss_window()
    parts, seconds, floor, best = [], 0.0, 0.0, 0.0
    for start in range(0, len(x), args.slice):
        xs = x[start : start + args.slice]
        ll, s, gemm = timed_against_gemm(lambda: importance_log_likelihood(
            model, xs, args.k, gen, batch_size=args.batch_size, max_samples=args.chunk,
            max_chunk_bytes=int(args.chunk_mib * 2**20), fast=args.path == "fast", gemm=args.gemm),
            decoder_out_layer(model))
        parts.append(ll)
        seconds += s
        floor += len(xs) * args.k * dec / gemm["torch"]
        best += len(xs) * args.k * dec / max(gemm.values())
        print(f"{start + len(xs)}/{len(x)} images, {seconds:.0f} s, {seconds / floor:.3f} x floor, "
              f"{seconds / best:.3f} x best floor", file=sys.stderr, flush=True)
    ll = torch.cat(parts)
    res = {"aevb_images": len(x), "aevb_k": args.k, "aevb_seconds": round(seconds, 1),
           "aevb_images_x_samples_per_s": round(len(x) * args.k / seconds),
           "aevb_floor_seconds": round(floor, 1), "aevb_over_floor": round(seconds / floor, 3),
           "aevb_best_floor_seconds": round(best, 1), "aevb_over_best_floor": round(seconds / best, 3),
           "aevb_log_px": round(ll.mean().item(), 3),
           "aevb_log_px_stderr": round(ll.std().item() / math.sqrt(len(ll)), 3) if len(ll) > 1 else None,
           "full_rss_before_mib": baseline, "full_rss_peak_while_evaluating_mib": window_peak_mib()}
    if len(x) < FULL_TEST_IMAGES:
        res["extrapolated_seconds_for_10000_images"] = round(seconds * FULL_TEST_IMAGES / len(x), 1)
    return res


PHASES = {"aevb": phase_aevb, "pythae": phase_pythae, "full": phase_full}


def run_phase(name: str, argv: list[str]) -> dict:
    """Run one phase in a child process: its JSON result plus its lifetime peak resident set size."""
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--phase", name, *argv],
                             stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"phase {name} failed with exit code {child.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res[f"{name}_process_peak_rss_mib"] = round(usage.ru_maxrss / 1024)  # Linux: KiB; includes loading the data
    return res


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="evaluate this run directory's model on its test split")
    ap.add_argument("--data-dir")
    ap.add_argument("--images", type=int, default=0, help="images to evaluate (0: all with --run, 20 without)")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--pythae-images", type=int, default=0, help="pythae: the first N of the images (0: all)")
    ap.add_argument("--pythae-k", type=int, default=0, help="pythae: samples per image (0: --k)")
    ap.add_argument("--latent-dim", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100, help="aevb: images encoded at once")
    ap.add_argument("--chunk", type=int, default=None, help="aevb: cap on samples per image in one chunk")
    ap.add_argument("--chunk-mib", type=float, default=16.0, help="aevb: byte budget of one decoded chunk (MiB)")
    ap.add_argument("--path", choices=("fast", "generic", "reference"), default="fast",
                    help="aevb: fast (Bernoulli-MLP path), generic (the model's own log_prob, same chunks) or "
                         "reference (objectives.iwae_bound per batch, the implementation before this one)")
    ap.add_argument("--no-pythae", action="store_true", help="time aevb only")
    ap.add_argument("--gemm", choices=("auto", "onednn", "torch"), default="auto",
                    help="aevb: the fast path's matrix products (auto: oneDNN on CPUs where it works)")
    ap.add_argument("--repeats", type=int, default=3, help="aevb: timed repeats (the median is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="aevb alone on the whole test split, in slices")
    ap.add_argument("--slice", type=int, default=500, help="--full: images per timed slice")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    torch.set_num_threads(args.threads)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return 0
    model, x, source = model_and_images(args)
    dec, enc = pass_flops(model)
    res = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": args.threads, "model": source,
           "decoder_flops_per_sample": dec, "encoder_flops_per_image": enc, "chunk_mib": args.chunk_mib,
           "path": args.path + (f", gemm={args.gemm}" if args.path == "fast" else "")}
    if args.full:
        res.update(run_phase("full", argv))
        print(json.dumps(res))
        return 0
    res.update(run_phase("aevb", argv))
    if args.no_pythae:
        print(json.dumps(res))
        return 0
    try:
        import pythae  # noqa: F401
    except ImportError:
        print(json.dumps(res))
        print("pythae is not installed: skipping it (pip install pythae==0.1.2 --no-deps)")
        return 0
    res.update(run_phase("pythae", argv))
    res["speedup_throughput"] = round(res["aevb_images_x_samples_per_s"] / res["pythae_images_x_samples_per_s"], 2)
    res["speedup_floor_normalised"] = round(res["pythae_over_floor"] / res["aevb_over_floor"], 2)
    res["speedup_bound_at_aevb_floor"] = res["pythae_over_floor"]  # if aevb took exactly the torch.matmul floor
    res["speedup_bound_at_aevb_best_floor"] = res["pythae_over_best_floor"]
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
