"""The disentanglement table of docs/results-disentanglement.md (issue 19): the six models of Locatello et al.
(2019) on dSprites at hyperparameters from their grids and two seeds, each scored by the seven metrics of
``aevb.disentanglement`` (``aevb evaluate --disentanglement``) at the sample sizes below.

    AEVB_DATA_DIR=/path/to/data OMP_NUM_THREADS=1 \
        python benchmarks/disentanglement_numbers.py --out runs/dis-numbers [--shard 0/2] [--rounds 1,2]
    python benchmarks/disentanglement_numbers.py --out runs/dis-numbers --report   # the tables so far

Resumable: a trained run (its epoch in metrics.jsonl) and a scored row (in OUT/results.json) are kept and
skipped when the script is run again. ``results.json`` is rewritten atomically after every row, under a lock,
so two shards (``--shard 0/2`` and ``--shard 1/2``, two processes) can fill it at once and a killed run loses
at most the row in progress.

The budget is one for all models: Locatello et al.'s network (conv64, z = 10, Bernoulli decoder), Adam at their
learning rate 1e-4, batch 64, ``STEPS`` steps (the first ``STEPS * 64`` images of the shuffled training split,
seen once: ``--subset``, one epoch). The capacity schedule reaches C_max at a third of the run, where Locatello
et al.'s reaches it at 100,000 of 300,000 steps. The metrics draw from the whole data set (every split, the
full factor grid), whatever subset the model was trained on.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

STEPS = 1000
BATCH = 64
TRAIN = ["--dataset", "dsprites", "--epochs", "1", "--batch-size", str(BATCH), "--subset", str(STEPS * BATCH),
         "--valid-size", "1000"]
# name: Locatello et al.'s hyperparameter, (round 1, round 2) values from their grid, flags for a value
MODELS = {
    "beta-vae": ("beta", (4, 16), lambda v: ["--beta", str(v)]),
    "annealed-vae": ("C_max", (25, 5), lambda v: ["--objective", "capacity", "--capacity-max", str(v),
                                                  "--capacity-gamma", "1000", "--capacity-steps", str(STEPS // 3)]),
    "factor-vae": ("gamma", (30, 100), lambda v: ["--model", "factorvae", "--factor-gamma", str(v)]),
    "dip-vae-i": ("lambda_od", (5, 20), lambda v: ["--objective", "dipvae-i", "--dip-lambda-od", str(v)]),
    "dip-vae-ii": ("lambda_od", (5, 20), lambda v: ["--objective", "dipvae-ii", "--dip-lambda-od", str(v)]),
    # disentanglement_lib's beta-TCVAE estimates the total correlation by minibatch-weighted sampling
    "beta-tcvae": ("beta", (6, 10), lambda v: ["--objective", "tcvae", "--beta", str(v), "--tc-estimator", "mws"]),
}
SEEDS = (0, 1)
# smaller than Locatello et al.'s (LOCATELLO_SIZES) so that the whole table fits about 2 CPU-hours
SIZES = {"beta_vae_train": 300, "beta_vae_eval": 150, "factor_vae_train": 300, "factor_vae_eval": 150,
         "dci_train": 1000, "dci_test": 500}
N_ELBO = 2000  # test images for the ELBO, KL per dimension and active units


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    use = resource.getrusage(who)
    return use.ru_utime + use.ru_stime


def rows(rounds: list[int]) -> list[tuple[str, str, float, int]]:
    """(key, model, value, seed) in the order they are run: round by round, seed by seed, model by model."""
    out = []
    for r in rounds:
        for seed in SEEDS:
            for model, (_, values, _) in MODELS.items():
                v = values[r - 1]
                out.append((f"{model}/{v:g}/{seed}", model, v, seed))
    return out


def trained(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return (run / "model.safetensors").exists() and metrics.exists() and any(
        json.loads(line).get("epoch") == 1 for line in metrics.read_text().splitlines() if line.strip())


def write_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path):
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def train(run: Path, model: str, value: float, seed: int, log) -> dict:
    """Train the row's run unless it is there; its train wall and CPU seconds (kept in RUN/timing.json)."""
    timing = run / "timing.json"
    if trained(run) and timing.exists():
        return json.loads(timing.read_text())
    flags = [*TRAIN, *MODELS[model][2](value), "--seed", str(seed), "--no-progress", "--no-figures",
             "--out", str(run)]
    log.write(f"$ aevb train {' '.join(flags)}\n")
    log.flush()
    if run.exists():
        import shutil

        shutil.rmtree(run)
    t0, c0 = time.time(), cpu_seconds(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "aevb", "train", *flags], check=True, stdout=log, stderr=subprocess.STDOUT)
    out = {"train_wall_s": time.time() - t0, "train_cpu_s": cpu_seconds(resource.RUSAGE_CHILDREN) - c0,
           "train_flags": flags[:-2]}
    write_atomic(timing, out)
    return out


def full_dataset(run):
    """The run's data set without its training subset: the metrics draw from the whole factor grid."""
    from dataclasses import replace

    from aevb.data import load_dataset

    return load_dataset(replace(run.config.data, subset=None))


def score(run_dir: Path, sizes: dict, traversal: bool = True) -> dict:
    """The seven scores with their details, the ELBO on N_ELBO test images, and the metrics' CPU seconds."""
    import aevb
    from aevb.disentanglement import evaluate_disentanglement, factor_of_each_dim
    from aevb.evaluate import evaluate

    run = aevb.load(run_dir)
    ds = full_dataset(run)
    c0, t0 = cpu_seconds(), time.time()
    res = evaluate_disentanglement(run.model, ds, seed=0, sizes=sizes)
    res["metric_cpu_s"], res["metric_wall_s"] = cpu_seconds() - c0, time.time() - t0
    ev = evaluate(run.model, ds.test.x[:N_ELBO], k=0)
    res["elbo"] = {k: v for k, v in ev.items() if k in ("n", "elbo", "reconstruction", "kl", "active_units")
                   or k.startswith("kl_dim_")}
    if traversal:
        from aevb.viz import plot_factor_traversal

        png = run_dir / "figures" / "factor_traversal.png"
        png.parent.mkdir(exist_ok=True)
        plot_factor_traversal(run.model, ds.test.x[0], png, factor_of_each_dim(res["disentanglement"]))
        res["figure"] = str(png)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shard", default="0/1", help="I/N: run every N-th row, starting at the I-th")
    p.add_argument("--rounds", default="1", help="comma-separated: 1 (the first value of each grid), 2")
    p.add_argument("--full-size", metavar="KEY",
                   help="Score the trained row KEY once more at Locatello et al.'s full sample sizes (key KEY/full)")
    p.add_argument("--report", action="store_true", help="Print the tables of the rows done so far")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    if args.report:
        print(report(read_results(results_path)))
        return
    log = open(args.out / f"log-{args.shard.replace('/', 'of')}.txt", "a")
    if args.full_size:
        todo = [(f"{args.full_size}/full", args.full_size)]
    else:
        i, n = (int(s) for s in args.shard.split("/"))
        todo = [(key, key) for key, *_ in rows([int(r) for r in args.rounds.split(",")])][i::n]
    for key, run_key in todo:
        if key in read_results(results_path):
            continue
        model, value, seed = run_key.split("/")
        run_dir = args.out / "runs" / run_key.replace("/", "-")
        row = {"model": model, "hyperparameter": MODELS[model][0], "value": float(value), "seed": int(seed),
               "run": str(run_dir), "steps": STEPS, "batch": BATCH}
        row.update(train(run_dir, model, float(value), int(seed), log))
        full = key.endswith("/full")
        row.update(score(run_dir, {} if full else SIZES, traversal=not full))
        with locked(results_path):
            results = read_results(results_path)
            results[key] = row
            write_atomic(results_path, results)
        log.write(f"done {key}: mig {row['mig']:.3f} factor_vae {row['factor_vae_score']:.3f} "
                  f"train {row['train_cpu_s']:.0f} CPU-s, metrics {row['metric_cpu_s']:.0f} CPU-s\n")
        log.flush()


SCORES = ("beta_vae_score", "factor_vae_score", "mig", "sap", "dci_disentanglement", "dci_completeness",
          "dci_informativeness")


def captured(row: dict) -> str:
    """The factors the code's dimensions capture most: how many dimensions each, and the largest share."""
    dims = row["disentanglement"]["factor_of_dim"]
    counts: dict[str, int] = {}
    for d in dims:
        counts[d["factor"]] = counts.get(d["factor"], 0) + 1
    best = max(dims, key=lambda d: d["share"])
    return (", ".join(f"{f} {n}" for f, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            + f" (best: {best['factor']} {best['share']:.2f})")


def report(results: dict) -> str:
    """Markdown: one line per row, then the median per model, then what each row's dimensions capture."""
    head = ("| model | hyperparameter | seed | " + " | ".join(SCORES) + " | active dims | ELBO | train CPU-s | "
            "metric CPU-s |\n|" + "---|" * (len(SCORES) + 7))
    lines = [head]
    order = {m: i for i, m in enumerate(MODELS)}
    done = sorted((r for k, r in results.items() if not k.endswith("/full")),
                  key=lambda r: (order[r["model"]], r["value"], r["seed"]))
    for r in done:
        lines.append(f"| {r['model']} | {r['hyperparameter']} {r['value']:g} | {r['seed']} | "
                     + " | ".join(f"{r[s]:.3f}" for s in SCORES)
                     + f" | {r['disentanglement']['factor_vae_active_dims']} | {r['elbo']['elbo']:.1f} | "
                       f"{r['train_cpu_s']:.0f} | {r['metric_cpu_s']:.0f} |")
    lines += ["", "| model | runs | " + " | ".join(SCORES) + " |", "|" + "---|" * (len(SCORES) + 2)]
    for model in MODELS:
        mine = [r for r in done if r["model"] == model]
        if mine:
            lines.append(f"| {model} | {len(mine)} | "
                         + " | ".join(f"{statistics.median(r[s] for r in mine):.3f}" for s in SCORES) + " |")
    lines += ["", "| model | hyperparameter | seed | dimensions by the factor they share most with | KL per dimension "
              "(nats) | active units |", "|---|---|---|---|---|---|"]
    for r in done:
        kl = [r["elbo"][f"kl_dim_{d}"] for d in range(len(r["disentanglement"]["factor_of_dim"]))]
        lines.append(f"| {r['model']} | {r['hyperparameter']} {r['value']:g} | {r['seed']} | {captured(r)} | "
                     + " ".join(f"{v:.1f}" for v in sorted(kl, reverse=True)) + f" | {r['elbo']['active_units']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
