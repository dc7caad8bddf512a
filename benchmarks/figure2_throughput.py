"""The paper's figure 2 (all of a data set's panels: every latent size, AEVB and wake-sleep, with the
step-size trials), timed three ways, each in its own child process, interleaved over rounds:

- ``before``: the code before batching (``--before-src``: a checkout's ``src``; one model at a time,
  torch.optim.Adagrad's default for-loop kernel), what "today's separate runs" cost;
- ``separate``: this code, ``--no-batched`` (one model at a time, the fused Adagrad kernel);
- ``batched``: this code's default (each algorithm's models in one stacked step, ``aevb.batched``).

    git archive <commit-before> src | tar -x -C /tmp/before
    python benchmarks/figure2_throughput.py --budget 100000 --before-src /tmp/before/src --rounds 1 \\
        --json docs/bench-figure2-throughput.json

Each child runs ``aevb reproduce figure2 --dataset mnist --budget B`` at ``--threads``; the parent reports
its wall seconds and CPU seconds (user + system of the child: on a shared machine the less noisy of
the two), the ratios to ``batched``, and checks that ``separate`` and ``batched`` wrote the same CSV
(all columns but ``seconds``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def run_child(system: str, args, out: Path) -> dict:
    src = args.before_src if system == "before" else SRC
    cmd = [sys.executable, "-m", "aevb", "reproduce", "figure2", "--dataset", args.dataset, "--budget",
           str(args.budget), "--n-eval", str(args.n_eval), "--threads", str(args.threads), "--out", str(out)]
    if args.nz:
        cmd += ["--nz", args.nz]
    if system == "separate":
        cmd.append("--no-batched")
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{system} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "load_avg": os.getloadavg()[0]}


def table(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "frey_face"])
    ap.add_argument("--budget", type=int, default=100_000, help="training samples per model")
    ap.add_argument("--nz", help="latent sizes (default: the paper's)")
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--systems", default="before,separate,batched")
    ap.add_argument("--before-src", type=Path, help="the src folder of the code before batching")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    if "before" in systems and not args.before_src:
        raise SystemExit("--before-src is needed for the 'before' system (or leave it out of --systems)")
    times: dict[str, list[dict]] = {s: [] for s in systems}
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for system in systems:
                out = Path(tmp) / f"{system}-{r}"
                times[system].append(run_child(system, args, out))
                tables[system] = table(out / f"figure2_{args.dataset}.csv")
                print(f"round {r + 1} {system:9s} {times[system][-1]}", flush=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "dataset": args.dataset, "budget": args.budget,
           "threads": args.threads, "cpus": os.cpu_count(), "systems": {}}
    ref = {k: statistics.median(t[k] for t in times["batched"]) for k in ("wall_seconds", "cpu_seconds")} \
        if "batched" in times else None
    for system, ts in times.items():
        row = {k: statistics.median(t[k] for t in ts) for k in ("wall_seconds", "cpu_seconds")}
        row["runs"] = ts
        if ref:
            row.update({f"{k}_over_batched": round(row[k] / ref[k], 2) for k in ("wall_seconds", "cpu_seconds")})
        res["systems"][system] = row
    if "separate" in tables and "batched" in tables:
        res["batched_csv_equals_separate"] = tables["separate"] == tables["batched"]
    if "before" in tables and "batched" in tables:
        same = [a == b for a, b in zip(tables["before"], tables["batched"])]
        res["rows_equal_to_before"] = f"{sum(same)} of {len(same)}"
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
