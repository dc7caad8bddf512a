#!/usr/bin/env bash
# Mutation testing with mutmut 3 (pip install mutmut) of the numerics (objectives, distributions,
# importance, flows, priors), the metrics of evaluate, the training step of train and the checkpoints
# of checkpoint: the scope of benchmarks/mutation_scope.py ([tool.mutmut] in pyproject.toml: the files,
# and the tests from which mutmut learns which tests reach each function; each mutant runs only those).
#
# It runs in a copy of the repository, OUT/work, so mutmut's mutants/ folder stays out of the
# checkout; the copy is kept, so a second call resumes: it runs the in-scope mutants that have no
# verdict yet (mutmut learns the coverage of new tests only). Mutant names (or globs) after OUT are
# run again instead, e.g. the survivors after new tests: benchmarks/mutation.sh OUT 'aevb.objectives.*'.
# Bounded in time (TIMEOUT seconds of wall clock for the whole call, default 7200; WORKERS workers,
# default 2; per mutant, mutmut's own limit of (its tests' time + 10 s) x 6). The results (every
# mutant's status), the survivors' diffs and the score over the scope go to OUT (default runs/mutation).
#
#   AEVB_DATA_DIR=../shared/data benchmarks/mutation.sh [OUT [MUTANT_NAME...]]
set -euo pipefail
cd "$(dirname "$0")/.."
HERE="$PWD"
OUT="$(mkdir -p "${1:-runs/mutation}" && cd "${1:-runs/mutation}" && pwd)"
shift || true
WORK="$OUT/work"
mkdir -p "$WORK"
git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"
# new files not yet committed travel too (mutmut copies tests/ into mutants/ itself)
git ls-files -z --others --exclude-standard tests src benchmarks | xargs -0 -r -I{} cp --parents {} "$WORK"
cd "$WORK"
python benchmarks/mutation_scope.py undecorate src/aevb/evaluate.py  # mutmut skips decorated functions
export OMP_NUM_THREADS=1  # one thread per worker: forked torch workers with an OpenMP pool can hang
if [ $# -gt 0 ]; then
    names=("$@")
elif [ -e mutants/src/aevb/train.py.meta ]; then
    mapfile -t names < <(python "$HERE/benchmarks/mutation_scope.py" pending)
else
    mapfile -t names < <(python "$HERE/benchmarks/mutation_scope.py" globs)
fi
start=$(date +%s)
if [ ${#names[@]} -gt 0 ]; then
    echo "running ${#names[@]} names or globs" > "$OUT/mutmut-run.log"
    timeout "${TIMEOUT:-7200}" mutmut run --max-children "${WORKERS:-2}" "${names[@]}" >> "$OUT/mutmut-run.log" 2>&1 || true
fi
echo "mutmut run took $(( $(date +%s) - start )) s" | tee -a "$OUT/mutmut-run.log"
mutmut results --all true > "$OUT/mutmut-results.txt" 2>&1 || true
grep -E ': (survived|no tests|suspicious|segfault)$' "$OUT/mutmut-results.txt" | sed 's/:.*//' | while read -r name; do
    mutmut show "$name"
done > "$OUT/survivors.diff" 2>&1 || true
python "$HERE/benchmarks/mutation_scope.py" score "$OUT/mutmut-results.txt" "$HERE/benchmarks/mutation-equivalent.txt" | tee "$OUT/score.txt"
