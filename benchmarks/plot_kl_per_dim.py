"""Sorted KL per latent dimension, one line per run, from ``aevb evaluate --json`` outputs.

    PYTHONPATH=src python benchmarks/plot_kl_per_dim.py OUT.png NAME=RUN/eval.json ...

Reads the ``kl_dim_j`` keys (nats, averaged over the evaluated images), sorts each run's
dimensions from most to least used and plots them on a log scale; each label carries the
run's active units (Var_x E_q[z_j | x] > 0.01). KLs below 1e-4 nats are drawn at 1e-4.
Also writes OUT.csv (name, rank, dimension, KL).
"""

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from aevb.viz import save_figure  # noqa: E402


def main(out: str, *specs: str) -> None:
    runs = []
    for spec in specs:
        name, _, path = spec.rpartition("=")  # the name may hold "=", the path not
        r = json.loads(Path(path).read_text())
        kl = {int(k[len("kl_dim_"):]): v for k, v in r.items() if k.startswith("kl_dim_")}
        order = sorted(kl, key=kl.get, reverse=True)
        runs.append((name, r, order, kl))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    rows = []
    for name, r, order, kl in runs:
        values = [max(kl[j], 1e-4) for j in order]
        ax.plot(range(1, len(values) + 1), values, marker=".", label=f"{name} ({r['active_units']}/{r['latent_dim']} active)")
        rows += [{"name": name, "rank": i + 1, "dimension": j, "kl": kl[j]} for i, j in enumerate(order)]
    ax.set_yscale("log")
    ax.set_xlabel("latent dimension, sorted by KL")
    ax.set_ylabel("KL(q(z_j|x) || p(z_j)), nats (test mean)")
    n = runs[0][1]["n"]
    ax.set_title(f"KL per latent dimension ({n} test images)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    print(save_figure(fig, out))
    with open(Path(out).with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["name", "rank", "dimension", "kl"])
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
