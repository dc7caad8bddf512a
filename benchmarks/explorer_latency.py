"""Latency of the explorer's decode request on an MNIST-sized model (784-400-20 MLP, Bernoulli).

    PYTHONPATH=src python benchmarks/explorer_latency.py [--run RUN_DIR] [--n 300] [--threads 2]

Without --run an untrained model of that shape is used (the weights do not change the cost).
Two numbers: the model work alone (decode + PNG encoding, in process), and the whole HTTP
round trip to a uvicorn server on 127.0.0.1 (a keep-alive httpx client, JSON in, PNG out).
Prints one JSON object with the median, 95th percentile and max in milliseconds, and the
load average, since the machine this runs on is often shared.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn

from aevb.checkpoint import save_model
from aevb.run import Run, load
from aevb.config import ModelConfig, RunConfig
from aevb.models import build_model
from aevb.serve.app import Explorer, create_app


def summary(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {"median_ms": round(statistics.median(ms), 3), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3),
            "max_ms": round(ms[-1], 3), "n": len(ms)}


def mnist_run(tmp: Path) -> Run:
    cfg = RunConfig(model=ModelConfig(input_shape=(1, 28, 28), hidden=(400,), latent_dim=20))
    cfg.data.dataset = "mnist"
    torch.manual_seed(0)
    save_model(tmp, build_model(cfg.model), cfg)
    return load(tmp)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        run = load(args.run)
    else:
        import tempfile

        run = mnist_run(Path(tempfile.mkdtemp(prefix="aevb-latency-")))
    d = run.config.model.latent_dim
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(args.n, d, generator=g)

    ex = Explorer(run)
    for z in zs[:20]:
        ex.decode_png(z)
    direct = []
    for z in zs:
        t = time.perf_counter()
        ex.decode_png(z)
        direct.append(time.perf_counter() - t)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    http = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for z in zs[:20]:
            client.post("/api/decode", json={"z": z.tolist()}).raise_for_status()
        for z in zs:
            t = time.perf_counter()
            res = client.post("/api/decode", json={"z": z.tolist()})
            http.append(time.perf_counter() - t)
            assert res.status_code == 200 and res.content[:4] == b"\x89PNG"
    server.should_exit = True
    m = run.config.model
    print(json.dumps({"model": f"{m.data_dim}-{'-'.join(map(str, m.hidden))}-{d} {m.likelihood}",
                      "torch_threads": args.threads, "decode_and_png": summary(direct), "http_round_trip": summary(http),
                      "load_average": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
