"""The scope of benchmarks/mutation.sh, and its passes: which mutmut mutants it runs, and the score.

mutmut mutates whole files (``only_mutate`` in pyproject.toml); the scope is every mutant of the five
numerics files and, of ``evaluate``, ``checkpoint`` and ``train``, the mutants of the functions below
(docs/reliability.md, "Mutation testing", says why the others are out). Run in mutmut's copy (OUT/work):

    python mutation_scope.py undecorate src/aevb/evaluate.py  # before generating: mutmut skips decorated functions
    python mutation_scope.py generate                          # mutmut's mutants/ (no test runs)
    python mutation_scope.py pass1 PASS1 [ONLY [SAMPLE]]       # in-scope names for pass 1 (no verdict yet)
    python mutation_scope.py pass2 PASS1                       # pass 1's survivors, for mutmut (pass 2)
    python mutation_scope.py final PASS1 > FINAL               # each in-scope mutant's verdict
    python mutation_scope.py score FINAL [EQUIVALENT [SAMPLE]] # counts and score over the scope (its sample)

Pass 1 (``benchmarks/mutant_check.py`` against the fast tests written for the scope) and pass 2 (``mutmut
run`` of pass 1's survivors against mutmut's whole test selection) both count a kill only when a test of
the suite fails on the mutant; a survivor has survived the whole selection (or pass 2 did not reach it).
EQUIVALENT (benchmarks/mutation-equivalent.txt): the mutants judged equivalent, one a line.
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


KILLED = {1: "killed", 3: "killed"}  # mutmut's exit codes (mutmut.stats.status_by_exit_code)
TIMEOUT = {36, -24, 24, 152, 255}


def mutmut_verdicts() -> dict[str, str | None]:
    """Every generated mutant's mutmut status (None: not run by mutmut)."""
    out: dict[str, str | None] = {}
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = (None if code is None else KILLED.get(code) or ("timeout" if code in TIMEOUT else
                         "survived" if code == 0 else "no tests" if code in (5, 33) else "suspicious"))
    return out


def read_verdicts(path: str) -> dict[str, str]:
    if not Path(path).exists():
        return {}
    return dict(line.strip().rsplit(": ", 1) for line in open(path) if ": " in line)


def generate() -> None:
    """mutmut's mutants/ folder for the files of ``only_mutate``, as ``mutmut run`` makes it, without running tests."""
    import mutmut.__main__ as m

    Path("mutants").mkdir(exist_ok=True)
    m.set_mutant_under_test("mutant_generation")
    m.copy_src_dir()
    m.copy_also_copy_files()
    m.setup_source_paths()
    m.store_lines_covered_by_tests()
    m.create_mutants(2)


def pass1(path: str, only: str | None = None, sample: int = 1) -> list[str]:
    """In-scope mutants that neither mutmut nor pass 1 has killed or judged yet: of those named in the
    file ``only`` (fnmatch patterns, one a line) when given, and of every ``sample``-th (mutant number
    divisible by ``sample``); in turns over the functions, so that a pass cut short has reached them all."""
    done = read_verdicts(path)
    patterns = [line.strip() for line in open(only) if line.strip()] if only else ["*"]
    by_function: dict[str, list[str]] = collections.defaultdict(list)
    for n, v in mutmut_verdicts().items():
        function, _, number = n.rpartition("__mutmut_")
        if (in_scope(n) and v not in ("killed", "timeout") and n not in done and int(number) % sample == 0
                and any(fnmatch.fnmatch(n, p) for p in patterns)):
            by_function[function].append(n)
    queues = list(by_function.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def pass2(path: str) -> list[str]:
    """Pass 1's survivors (and mutants no test of pass 1 reached) for mutmut: exact names, or
    ``FUNCTION__mutmut_*`` for a function no selected test reaches (mutmut fails on an exact name there)."""
    reached = {}
    if Path("mutants/mutmut-stats.json").exists():
        reached = json.loads(Path("mutants/mutmut-stats.json").read_text())["tests_by_mangled_function_name"]
    out = set()
    for name, verdict in read_verdicts(path).items():
        if verdict in ("survived", "no tests") and in_scope(name):
            function = name.rsplit("__mutmut_", 1)[0]
            out.add(name if reached.get(function) or not reached else function + "__mutmut_*")
    return sorted(out)


def final(path: str) -> None:
    """Each in-scope mutant's verdict: killed or timeout by mutmut, else killed by pass 1, else mutmut's
    verdict (pass 2), else pass 1's ("survived" there: not re-run by pass 2), else "not checked"."""
    first = read_verdicts(path)
    for name, verdict in mutmut_verdicts().items():
        if in_scope(name):
            if verdict not in ("killed", "timeout"):
                verdict = "killed" if first.get(name) == "killed" else verdict or first.get(name) or "not checked"
            print(f"{name}: {verdict}")


def score(results: str, equivalent: str | None, sample: int = 1) -> None:
    """Per file and in all: mutants, killed, timeout, survived, equivalent, not run; the score
    killed / (mutants with a verdict - equivalent), with mutmut's timeouts counted as kills and not.
    ``sample``: over every ``sample``-th mutant only (pass 1's SAMPLE)."""
    equiv = set()
    if equivalent and Path(equivalent).exists():
        equiv = {line.split()[0] for line in open(equivalent) if line.strip() and not line.startswith("#")}
    by_file: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in open(results):
        if ": " not in line:
            continue
        name, status = line.strip().rsplit(": ", 1)
        if not in_scope(name) or int(name.rpartition("__mutmut_")[2]) % sample:
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
    elif cmd == "generate":
        generate()
    elif cmd == "pass1":
        print("\n".join(pass1(args[0], args[1] if len(args) > 1 and args[1] else None,
                               int(args[2]) if len(args) > 2 else 1)))
    elif cmd == "pass2":
        print("\n".join(pass2(*args)))
    elif cmd == "globs":
        print("\n".join(globs()))
    elif cmd == "final":
        final(*args)
    elif cmd == "score":
        score(args[0], args[1] if len(args) > 1 else None, int(args[2]) if len(args) > 2 else 1)
    else:
        sys.exit(f"unknown command {cmd!r}: undecorate, generate, pass1, pass2, globs, final or score")
