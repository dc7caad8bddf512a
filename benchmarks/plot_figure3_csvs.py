"""Merge figure-3 CSVs written by separate ``aevb reproduce figure3`` runs and plot them as one figure.

    python benchmarks/plot_figure3_csvs.py OUT.png A.csv B.csv ...

Later files win for the same (training-set size, method); the merged rows go to OUT.csv.
"""

import csv
import sys
from pathlib import Path

from aevb.reproduce.common import write_csv
from aevb.reproduce.figure3 import plot


def main(out, *paths):
    curves = {}
    for p in paths:
        with open(p) as f:
            rows = list(csv.DictReader(f))
        for key in {(r["n_train"], r["method"]) for r in rows}:
            curves[key] = [r for r in rows if (r["n_train"], r["method"]) == key]
    rows = [r for key in sorted(curves, key=lambda k: (int(k[0]), k[1])) for r in curves[key]]
    write_csv(Path(out).with_suffix(".csv"), rows)
    print(plot(rows, out))


if __name__ == "__main__":
    main(*sys.argv[1:])
