"""The scope of benchmarks/mutation.sh: which mutmut mutants it runs, and its score over them.

mutmut mutates whole files (``only_mutate`` in pyproject.toml); the scope is every mutant of the five
numerics files and, of ``evaluate``, ``checkpoint`` and ``train``, the mutants of the functions below
(docs/reliability.md, "Mutation testing", says why the others are out).

    python benchmarks/mutation_scope.py undecorate src/aevb/evaluate.py   # in mutmut's copy, before a run
    python benchmarks/mutation_scope.py pending                            # in-scope names without a verdict
    python benchmarks/mutation_scope.py globs                              # the scope as mutmut name globs
    python benchmarks/mutation_scope.py score RESULTS [EQUIVALENT]         # counts and score over the scope

``pending`` and ``score`` read mutmut's ``mutants/**/*.meta`` and ``mutmut results --all true`` output
(RESULTS); EQUIVALENT (benchmarks/mutation-equivalent.txt) lists the mutants judged equivalent, one a line.
"""

from __future__ import annotations

import collections
import fnmatch
import json
import re
import sys
from pathlib import Path

NUMERICS = ["objectives", "distributions", "importance", "flows", "priors"]

# Function names as mutmut mangles them: x_NAME for a function, xǁClassǁNAME for a method.
STEP = [  # train.py: one training step, its loss, its optimizer, and the skip/NaN guard
    "x_guarded_step", "x__step_or_skip", "xǁGuardǁon", "xǁGuardǁrecord", "xǁTrainerǁstep",
    "xǁTrainerǁcheck_guard", "x_make_objective", "x_takes_argument", "x_make_optimizer", "x__fused_steps",
    "x_binarize_draw", "xǁObjectiveModuleǁforward",
]
CHECKPOINT = [  # checkpoint.py: the weights, the optimizer and the training state, written and read back
    "x_atomic_write", "x_unwrap", "x__cpu_tensors", "x_save_model", "x_save_best", "x_read_best",
    "x_read_safetensors", "x__parse_safetensors", "x_load_model", "x_optimizer_to_flat",
    "x_optimizer_from_flat", "x_save_train_state", "x_read_train_state_bytes", "x__json_meta",
    "x__train_state", "x_load_train_state", "x_reseed_noise", "x_restore_train_state",
]
EVALUATE = [  # evaluate.py: the metrics and the protocol that puts them together
    "x__labelled_batches", "x__mean_and_stderr", "x_evaluate_elbo", "x_log_likelihood", "x_bits_per_dim",
    "x_decoder_statistics", "x_embed", "x_latent_statistics", "x_evaluate",
]
FUNCTIONS = {"train": STEP, "checkpoint": CHECKPOINT, "evaluate": EVALUATE}


def in_scope(name: str) -> bool:
    """Whether the mutant ``name`` (``aevb.MODULE.FUNCTION__mutmut_N``) is in the scope."""
    _, module, rest = name.split(".", 2)
    return module in NUMERICS or rest.rsplit("__mutmut_", 1)[0] in FUNCTIONS.get(module, ())


def globs() -> list[str]:
    return [f"aevb.{m}.*" for m in NUMERICS] + [f"aevb.{m}.{f}__mutmut_*" for m, fs in FUNCTIONS.items() for f in fs]


def undecorate(path: str) -> None:
    """mutmut 3 does not mutate decorated functions; in its copy of ``path``, a module-level
    ``@torch.no_grad()`` function becomes a plain one wrapped after the module's end (the same behaviour)."""
    src = Path(path).read_text()
    names = re.findall(r"^@torch\.no_grad\(\)\ndef (\w+)\(", src, flags=re.M)
    if names:
        src = re.sub(r"^@torch\.no_grad\(\)\n(?=def \w+\()", "", src, flags=re.M)
        src += "\n\n" + "".join(f"{n} = torch.no_grad()({n})\n" for n in names)
        Path(path).write_text(src)


def pending() -> list[str]:
    """The in-scope mutants mutmut has generated and not yet run: their names, or ``FUNCTION__mutmut_*``
    for a function no test reaches (mutmut looks an exact name's tests up and fails on such a function)."""
    reached = json.loads(Path("mutants/mutmut-stats.json").read_text())["tests_by_mangled_function_name"]
    out = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if code is None and in_scope(name):
                function = name.rsplit("__mutmut_", 1)[0]
                out.append(name if reached.get(function) else function + "__mutmut_*")
    return sorted(set(out))


def score(results: str, equivalent: str | None) -> None:
    """Per file and in all: mutants, killed, timeout, survived, equivalent, not run; the score
    killed / (mutants with a verdict - equivalent), with mutmut's timeouts counted as kills and not."""
    equiv = set()
    if equivalent and Path(equivalent).exists():
        equiv = {line.split()[0] for line in open(equivalent) if line.strip() and not line.startswith("#")}
    by_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in open(results):
        if ": " not in line:
            continue
        name, status = line.strip().rsplit(": ", 1)
        if not in_scope(name):
            continue
        if status == "survived" and name in equiv:
            status = "equivalent"
        by_file[name.split(".")[1]][status] += 1
    total: collections.Counter = collections.Counter()
    for f, c in sorted(by_file.items()):
        total.update(c)
        print(line_for(f, c))
    print(line_for("all", total))


def line_for(name: str, c: collections.Counter) -> str:
    n = sum(c.values())
    killed, timeout, equiv = c["killed"], c["timeout"], c["equivalent"]
    not_run = c["not checked"]
    judged = n - not_run - equiv
    return (f"{name}: {n} mutants, killed {killed}, timeout {timeout}, survived {c['survived']}, no tests "
            f"{c['no tests']}, equivalent {equiv}, not run {not_run}; score {killed / max(1, judged):.1%} "
            f"(timeouts as kills {(killed + timeout) / max(1, judged):.1%})")


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "undecorate":
        undecorate(*args)
    elif cmd == "pending":
        print("\n".join(pending()))
    elif cmd == "globs":
        print("\n".join(globs()))
    elif cmd == "score":
        score(args[0], args[1] if len(args) > 1 else None)
    else:
        sys.exit(f"unknown command {cmd!r}: undecorate, pending, globs or score")
