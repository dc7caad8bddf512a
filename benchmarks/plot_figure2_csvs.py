"""Merge figure-2 CSVs written by separate ``aevb reproduce figure2`` runs and plot them as one figure.

    PYTHONPATH=src python benchmarks/plot_figure2_csvs.py OUT.png A.csv B.csv ...

Later files win for the same (nz, algorithm).
"""

import csv
import sys

from aevb.reproduce.common import write_csv
from aevb.reproduce.figure2 import plot


def main(out, *paths):
    curves = {}
    for p in paths:
        with open(p) as f:
            rows = list(csv.DictReader(f))
        for key in {(r["nz"], r["algorithm"]) for r in rows}:
            curves[key] = [r for r in rows if (r["nz"], r["algorithm"]) == key]
    rows = [r for key in sorted(curves, key=lambda k: (int(k[0]), k[1])) for r in curves[key]]
    write_csv(__import__("pathlib").Path(out).with_suffix(".csv"), rows)
    dataset = rows[0]["dataset"]
    print(plot(rows, out, title=f"{dataset}: AEVB vs wake-sleep"))


if __name__ == "__main__":
    main(*sys.argv[1:])
