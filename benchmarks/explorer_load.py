"""Load test of the latent explorer over real HTTP: concurrent clients, decode requests, zero errors expected.

    PYTHONPATH=src python benchmarks/explorer_load.py --run RUN_DIR [--clients 8] [--requests 5000]
    PYTHONPATH=src python benchmarks/explorer_load.py --url http://127.0.0.1:8000 [--clients 8] [--requests 5000]

With --run the server is the real command, ``python -m aevb serve RUN_DIR --host 127.0.0.1 --port P`` on a
free port, started here and stopped at the end; with --url it is one already running. Each client is a
thread with its own keep-alive connection; the requests are shared out from one counter, each with a
different latent vector (N(0, 4 I), seeded). A request counts as an error unless it answers 200 with a
PNG of the model's height, width and channels. Latency is the time of ``client.post`` alone (the check
of the PNG is not timed). Prints one JSON object: p50/p95/p99/max latency in ms, throughput in requests
per second, the error count with up to five examples, and the load average, since the machine this
runs on is often shared.

``tests/test_serve_live.py`` calls ``run_load`` and ``serve`` from here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

READY_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(run_dir: Path, env: dict | None = None, cwd: Path | None = None,
          log: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m aevb serve RUN_DIR`` on 127.0.0.1 and a free port: yields (url, process) once it answers.

    ``env`` is added to this process's environment; the server's output goes to ``log`` (a temporary file
    by default), which is quoted when it exits early or does not answer within READY_TIMEOUT_S.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if log is None:
        fd, name = tempfile.mkstemp(prefix="aevb-serve-", suffix=".log")
        os.close(fd)
        log = Path(name)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "aevb", "serve", str(run_dir), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"aevb serve exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/api/info", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"aevb serve did not answer in {READY_TIMEOUT_S:g} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an ascending list."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def check_png(res: httpx.Response, shape: tuple[int, int, int]) -> str | None:
    """None when ``res`` is a 200 PNG of shape (C, H, W); otherwise what is wrong with it."""
    if res.status_code != 200:
        return f"status {res.status_code}: {res.text[:200]}"
    if res.headers.get("content-type") != "image/png":
        return f"content-type {res.headers.get('content-type')}"
    try:
        with Image.open(io.BytesIO(res.content)) as im:
            arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - any failure to read the PNG is the finding
        return f"unreadable PNG ({type(e).__name__}: {e})"
    c, h, w = shape
    want = (h, w) if c == 1 else (h, w, 3)
    return None if arr.shape == want else f"PNG of shape {arr.shape}, expected {want}"


def run_load(url: str, clients: int = 8, requests: int = 5000, seed: int = 0, warmup: int = 20,
             timeout_s: float = 30.0) -> dict:
    """``requests`` POST /api/decode calls from ``clients`` threads; latency summary, throughput and errors."""
    info = httpx.get(f"{url}/api/info", timeout=timeout_s).json()
    d, shape = info["latent_dim"], tuple(info["input_shape"])
    zs = (np.random.default_rng(seed).standard_normal((requests, d)) * 2.0).clip(-10, 10).tolist()
    latencies = [math.nan] * requests
    errors: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(requests))
    with httpx.Client(base_url=url, timeout=timeout_s) as client:  # first calls are slower: not counted
        for z in zs[:warmup]:
            client.post("/api/decode", json={"z": z})

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                t = time.perf_counter()
                try:
                    res = client.post("/api/decode", json={"z": zs[i]})
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}"
                else:
                    latencies[i] = time.perf_counter() - t
                    problem = check_png(res, shape)
                if problem:
                    with lock:
                        errors.append(f"request {i}: {problem}")

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ms = sorted(v * 1000 for v in latencies if not math.isnan(v))
    stats = {f"p{q}_ms": round(percentile(ms, q), 2) if ms else None for q in (50, 95, 99)}
    return {"url": url, "clients": clients, "requests": requests, "answered": len(ms), "errors": len(errors),
            "error_examples": errors[:5], **stats, "max_ms": round(ms[-1], 2) if ms else None, "wall_s": round(wall, 2),
            "throughput_rps": round(requests / wall, 1), "latent_dim": d, "input_shape": list(shape),
            "load_average": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, help="run directory: start `python -m aevb serve RUN` for the test")
    where.add_argument("--url", help="an explorer already running, e.g. http://127.0.0.1:8000")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.clients < 1 or args.requests < 1:
        ap.error("--clients and --requests must be at least 1")
    if args.url:
        result = run_load(args.url.rstrip("/"), args.clients, args.requests, args.seed)
    else:
        with serve(args.run) as (url, _):
            result = run_load(url, args.clients, args.requests, args.seed)
    print(json.dumps(result))
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
