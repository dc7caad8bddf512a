"""Rebuild figure-2 CSV rows from the progress lines that ``aevb reproduce figure2`` prints.

For runs stopped before a model finished, made with a version that wrote its CSV only after
each model (the current one writes it at every recorded point):

    python benchmarks/figure2_log_to_csv.py OUT.csv run1.log run2.log ...

Rows are keyed by (data set, Nz, algorithm, samples); a later log wins.
"""

import re
import sys
from pathlib import Path

from aevb.reproduce.common import write_csv

LINE = re.compile(r"^(\w+) Nz=(\d+) (aevb|wake-sleep) lr=([\d.e-]+): (\d+) samples, "
                  r"train (\S+), test (\S+) \((\d+) s\)$")


def main(out: str, *logs: str) -> None:
    rows = {}
    for log in logs:
        for line in Path(log).read_text().splitlines():
            m = LINE.match(line.strip())
            if m:
                d, nz, alg, lr, n, tr, te, sec = m.groups()
                rows[(d, int(nz), alg, int(n))] = {"dataset": d, "nz": nz, "algorithm": alg, "lr": lr, "samples": n,
                                                   "train_bound": tr.rstrip(","), "test_bound": te, "seconds": sec}
    if not rows:
        raise SystemExit("no figure-2 progress lines found in " + ", ".join(logs))
    print(write_csv(Path(out), [rows[k] for k in sorted(rows)]))


if __name__ == "__main__":
    main(*sys.argv[1:])
