"""The zoo's training curves: test -log p(x) against training CPU-hours, every row in one figure.

    PYTHONPATH=src python benchmarks/plot_zoo_curves.py ZOO_OUT docs/figures/zoo_curves.png

Reads ``ZOO_OUT/runs/ROW/curve.jsonl`` (written by ``aevb reproduce zoo --cpu-hours H``: the cheap estimate,
k = 100 on a fixed 1,000-image test subset, with its standard error as a band) and, where the row was
scored, ``zoo_score.json`` (the k = 5000 estimate on the scored test images, a filled marker at its
CPU-hours). The published figure is a short horizontal tick in the row's colour at the right edge. Dynamic
rows are solid lines, static rows dashed. Also writes the points as a CSV beside the PNG (same name).
"""

import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from aevb.reproduce.zoo import CURVE, ROWS, SCORE, read_curve  # noqa: E402
from aevb.viz import save_figure  # noqa: E402

Y_CAP = 130.0  # nats: the first minutes' points above it are left out of the view (they are in the CSV)


def main(zoo_out: str, out: str) -> None:
    runs = Path(zoo_out) / "runs"
    fig, ax = plt.subplots(figsize=(10.5, 6.5), layout="constrained")
    colours = plt.get_cmap("tab20").colors
    rows, right, low, high = [], 0.0, Y_CAP, 0.0
    for i, row in enumerate(ROWS):
        points = read_curve(runs / row.name) if (runs / row.name / CURVE).exists() else []
        if not points:
            continue
        colour = colours[i % len(colours)]
        x = [p["cpu_hours"] for p in points]
        y = [p["test_nll"] for p in points]
        se = [p["stderr"] for p in points]
        style = "-" if row.protocol == "dynamic" else "--"
        ax.plot(x, y, style, marker=".", color=colour, label=f"{row.name} ({row.protocol})")
        ax.fill_between(x, [a - b for a, b in zip(y, se)], [a + b for a, b in zip(y, se)], color=colour, alpha=0.15)
        right, low, high = max(right, x[-1]), min(low, min(y)), max(high, max(y))
        score_path = runs / row.name / SCORE
        if score_path.exists():
            s = json.loads(score_path.read_text())
            ax.plot([s["train_cpu_seconds"] / 3600], [s["test_nll"]], marker="*", markersize=12, color=colour)
            low = min(low, s["test_nll"])
        if row.published is not None:
            low = min(low, row.published)
        rows += [{"row": row.name, "protocol": row.protocol, **p} for p in points]
    for i, row in enumerate(ROWS):
        if row.published is not None and any(r["row"] == row.name for r in rows):
            ax.plot([right * 1.01, right * 1.05], [row.published] * 2, color=colours[i % len(colours)], lw=3)
    ax.set_ylim(low - 2, min(high, Y_CAP) + 2)
    ax.set_xlim(0, right * 1.07)
    ax.set_xlabel("training CPU-hours (one core, torch at 1 thread)")
    k, n = (rows[0]["k"], rows[0]["n_test"]) if rows else (100, 1000)
    ax.set_ylabel(f"test -log p(x), nats (k = {k}, {n:,} test images; band: ± 1 s.e.)")
    ax.set_title("Model zoo: test -log p(x) against training CPU time (star: k = 5000 score; "
                 "tick at the right: the published figure)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    print(save_figure(fig, out))
    keys = ["row", "protocol", *(k for k in (rows[0] if rows else {}) if k not in ("row", "protocol"))]
    with open(Path(out).with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main(*sys.argv[1:])
