#!/usr/bin/env bash
# Mutation testing with mutmut 3 (pip install mutmut) of the numerics (objectives, distributions,
# importance, flows, priors), the metrics of evaluate, the training step of train and the checkpoints
# of checkpoint: the scope of benchmarks/mutation_scope.py ([tool.mutmut] in pyproject.toml: the files,
# and the tests from which mutmut learns which tests reach each function).
#
# Two passes, in a copy of the repository (OUT/work, kept, so that a second call resumes):
#   1. every in-scope mutant against tests/test_mutants.py, the fast tests written for the scope
#      (benchmarks/mutant_check.py: each mutant in a child forked from one warm process, the tests that
#      reach its function, stopping at the first failure; TIMEOUT1 s of wall clock each, default 300);
#   2. pass 1's survivors with `mutmut run`, against mutmut's whole test selection (each mutant runs the
#      selected tests that reach its function; mutmut's limit of (their time + 10 s) x 6 each).
# Both count a kill only when a test of the suite fails. Mutant names (or globs) after OUT are run by
# mutmut instead, e.g. survivors after new tests: benchmarks/mutation.sh OUT 'aevb.objectives.x_elbo*'.
# ONLY: a file of name patterns (fnmatch, one a line) that limits pass 1 to those mutants of the scope;
# SAMPLE=k: pass 1 runs every k-th mutant only (those whose number divides by k), for an estimate in less time.
# Bounded in time: TIMEOUT seconds of wall clock for each pass (default 3600); WORKERS workers (default 2).
# Each mutant's verdict (final.txt), the survivors' diffs and the score over the scope go to OUT.
#
#   AEVB_DATA_DIR=../shared/data benchmarks/mutation.sh [OUT [MUTANT_NAME...]]
set -euo pipefail
cd "$(dirname "$0")/.."
HERE="$PWD"
SCOPE="python $HERE/benchmarks/mutation_scope.py"
OUT="$(mkdir -p "${1:-runs/mutation}" && cd "${1:-runs/mutation}" && pwd)"
shift || true
WORK="$OUT/work"
mkdir -p "$WORK"
git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"
# new files not yet committed travel too (mutmut copies tests/ into mutants/ itself)
git ls-files -z --others --exclude-standard tests src benchmarks | xargs -0 -r -I{} cp --parents {} "$WORK"
cd "$WORK"
$SCOPE undecorate src/aevb/evaluate.py  # mutmut does not mutate decorated functions
export OMP_NUM_THREADS=1  # one thread per worker: forked torch workers with an OpenMP pool can hang
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/passes.log"; }
start=$(date +%s)
if [ $# -gt 0 ]; then
    names=("$@")
else
    $SCOPE generate > "$OUT/generate.log" 2>&1
    rm -rf mutants/tests && cp -r tests mutants/tests  # the tests of this checkout
    $SCOPE pass1 "$OUT/pass1.txt" "${ONLY:-}" "${SAMPLE:-1}" > "$OUT/pass1-names.txt"
    log "pass 1: $(wc -l < "$OUT/pass1-names.txt") mutants against tests/test_mutants.py"
    (cd mutants && timeout "${TIMEOUT:-3600}" env TIMEOUT="${TIMEOUT1:-300}" WORKERS="${WORKERS:-2}" \
        python "$HERE/benchmarks/mutant_check.py" "$OUT/pass1-names.txt" "$OUT/pass1.txt" tests/test_mutants.py) \
        > "$OUT/pass1.log" 2>&1 || true
    log "pass 1 done after $(( $(date +%s) - start )) s"
    mapfile -t names < <($SCOPE pass2 "$OUT/pass1.txt")
fi
if [ ${#names[@]} -gt 0 ]; then
    log "pass 2 (mutmut run): ${#names[@]} names or globs"
    timeout "${TIMEOUT:-3600}" mutmut run --max-children "${WORKERS:-2}" "${names[@]}" > "$OUT/mutmut-run.log" 2>&1 || true
fi
log "done after $(( $(date +%s) - start )) s"
$SCOPE final "$OUT/pass1.txt" > "$OUT/final.txt"
grep -E ': (survived|no tests|suspicious|segfault)$' "$OUT/final.txt" | sed 's/:.*//' | while read -r name; do
    mutmut show "$name"
done > "$OUT/survivors.diff" 2>&1 || true
$SCOPE score "$OUT/final.txt" "$HERE/benchmarks/mutation-equivalent.txt" "${SAMPLE:-1}" | tee "$OUT/score.txt"
