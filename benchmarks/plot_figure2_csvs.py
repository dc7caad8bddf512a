"""Merge figure-2 CSVs written by separate ``aevb reproduce figure2`` runs and plot them as one figure.

    python benchmarks/plot_figure2_csvs.py OUT.png A.csv B.csv ...

Later files win for the same (nz, algorithm); the merged rows go to OUT.csv.
"""

import sys
from pathlib import Path

from aevb.reproduce.common import merge_curves, write_csv
from aevb.reproduce.figure2 import plot


def main(out, *paths):
    rows = merge_curves(paths, ("nz", "algorithm"))
    write_csv(Path(out).with_suffix(".csv"), rows)
    print(plot(rows, out, title=f"{rows[0]['dataset']}: AEVB vs wake-sleep"))


if __name__ == "__main__":
    main(*sys.argv[1:])
