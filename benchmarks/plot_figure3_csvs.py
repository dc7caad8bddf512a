"""Merge figure-3 CSVs written by separate ``aevb reproduce figure3`` runs and plot them as one figure.

    python benchmarks/plot_figure3_csvs.py OUT.png A.csv B.csv ...

Later files win for the same (training-set size, method); the merged rows go to OUT.csv.
"""

import sys
from pathlib import Path

from aevb.reproduce.common import merge_curves, write_csv
from aevb.reproduce.figure3 import plot


def main(out, *paths):
    rows = merge_curves(paths, ("n_train", "method"))
    write_csv(Path(out).with_suffix(".csv"), rows)
    print(plot(rows, out))


if __name__ == "__main__":
    main(*sys.argv[1:])
