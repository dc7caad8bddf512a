#!/usr/bin/env bash
# Mutation testing with mutmut 3 (pip install mutmut) of the numerics and the training step:
# objectives, distributions, evaluate, importance, checkpoint and train (the guarded step), against the
# fast tests that cover them ([tool.mutmut] in pyproject.toml). It runs in a copy of the repository, so
# mutmut's mutants/ folder stays out of the checkout, and in bounded time (TIMEOUT seconds, default
# 3600; 2 workers). The surviving mutants and the score go to OUT (default runs/mutation).
#
#   AEVB_DATA_DIR=../shared/data benchmarks/mutation.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$(mkdir -p "${1:-runs/mutation}" && cd "${1:-runs/mutation}" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"
cd "$WORK"
timeout "${TIMEOUT:-3600}" mutmut run --max-children "${WORKERS:-2}" 2>&1 | tail -n 5 | tee "$OUT/mutmut-run.log" || true
mutmut results --all true > "$OUT/mutmut-results.txt" 2>&1 || mutmut results > "$OUT/mutmut-results.txt" 2>&1 || true
python - "$OUT/mutmut-results.txt" <<'PY' | tee "$OUT/score.txt"
import collections, sys
counts = collections.Counter(line.rsplit(":", 1)[-1].strip() for line in open(sys.argv[1]) if ":" in line)
killed, survived = counts.get("killed", 0), counts.get("survived", 0)
print(dict(counts))
print(f"killed {killed} of {killed + survived} mutants that ran to an end ({killed / max(1, killed + survived):.1%})")
PY
