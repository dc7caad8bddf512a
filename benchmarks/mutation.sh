#!/usr/bin/env bash
# Mutation testing with mutmut 3 (pip install mutmut) of the numerics: objectives, distributions,
# importance, flows and priors ([tool.mutmut] in pyproject.toml: the files, and the fast tests from
# which mutmut learns which tests reach each function; each mutant runs only those).
#
# It runs in a copy of the repository, OUT/work, so mutmut's mutants/ folder stays out of the
# checkout; the copy is kept, so a second call resumes (mutmut skips the mutants it has a result for,
# and learns the coverage of new tests only). Mutant names after OUT are run again, e.g. the
# survivors after new tests: benchmarks/mutation.sh runs/mutation 'aevb.objectives.*'.
# Bounded in time (TIMEOUT seconds, default 7200; WORKERS workers, default 2). The results
# (every mutant's status), the survivors' diffs and the score go to OUT (default runs/mutation).
#
#   AEVB_DATA_DIR=../shared/data benchmarks/mutation.sh [OUT [MUTANT_NAME...]]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(mkdir -p "${1:-runs/mutation}" && cd "${1:-runs/mutation}" && pwd)"
shift || true
WORK="$OUT/work"
mkdir -p "$WORK"
git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"
# new test files not yet committed travel too (mutmut copies tests/ into mutants/ itself)
git ls-files -z --others --exclude-standard tests | xargs -0 -r -I{} cp --parents {} "$WORK"
cd "$WORK"
export OMP_NUM_THREADS=1  # one thread per worker: forked torch workers with an OpenMP pool can hang
start=$(date +%s)
timeout "${TIMEOUT:-7200}" mutmut run --max-children "${WORKERS:-2}" "$@" > "$OUT/mutmut-run.log" 2>&1 || true
echo "mutmut run took $(( $(date +%s) - start )) s" | tee -a "$OUT/mutmut-run.log"
mutmut results --all true > "$OUT/mutmut-results.txt" 2>&1 || true
grep -E ': (survived|no tests|suspicious|segfault)$' "$OUT/mutmut-results.txt" | sed 's/:.*//' | while read -r name; do
    mutmut show "$name"
done > "$OUT/survivors.diff" 2>&1 || true
python - "$OUT/mutmut-results.txt" <<'PY' | tee "$OUT/score.txt"
import collections, sys
counts = collections.Counter(line.rsplit(":", 1)[-1].strip() for line in open(sys.argv[1]) if ":" in line)
print(dict(counts))
killed, timeout, survived, no_tests = (counts.get(k, 0) for k in ("killed", "timeout", "survived", "no tests"))
total = sum(counts.values())
print(f"{total} mutants: killed {killed}, timeout {timeout}, survived {survived}, no tests {no_tests}; "
      f"killed or timed out {(killed + timeout) / max(1, total):.1%} of all")
PY
