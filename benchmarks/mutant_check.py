"""Run named mutmut mutants against a chosen set of fast tests, forked from one warm process.

mutmut 3 runs each mutant against every selected test that reaches the mutated function, fastest
first, and times out by wall clock; on a machine shared with other jobs the functions that every test
reaches (the distributions' ``noise``, ``log_prob_per_dim``...) then time out before their first
failing test. This driver does what mutmut's workers do (set ``MUTANT_UNDER_TEST`` in a forked
child, run pytest, read its exit code), with the tests given on the command line: run it from the
folder mutmut generated (``OUT/work/mutants``) after ``mutmut run``. A kill here is a real kill (a
test of the suite fails on the mutant); a survivor here may still be killed by a test not given. Each
mutant runs only the given tests that reach its function (recorded on a first, clean run).

    cd runs/mutation/work/mutants && python ../../../../benchmarks/mutant_check.py NAMES_FILE OUT_FILE \
        tests/test_mutants.py tests/test_objectives.py

NAMES_FILE: one mutant name a line. OUT_FILE: "name: killed|survived|timeout" lines, appended as they
come (a second call skips the names already there). TIMEOUT (seconds of wall clock per mutant, default
300) and WORKERS (default 2) from the environment.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def collect_coverage(pytest, args: list[str]) -> dict[str, set[str]]:
    """Run the tests once on the clean code, recording which functions (mutmut's mangled names, e.g.
    ``aevb.priors.x_uniform_indices``) each test reaches; each mutant then runs only those tests."""
    from mutmut.mutation import trampoline

    hits: set[str] = set()
    tests_by_function: dict[str, set[str]] = {}
    trampoline.record_trampoline_hit = lambda name, caller=None: hits.add(name)

    class Coverage:
        def pytest_runtest_teardown(self, item, nextitem):
            for name in hits:
                tests_by_function.setdefault(name, set()).add(item.nodeid)
            hits.clear()

    os.environ["MUTANT_UNDER_TEST"] = "stats"
    if pytest.main(args, plugins=[Coverage()]) != 0:
        sys.exit("the given tests fail without a mutant")
    return tests_by_function


def main() -> None:
    names_file, out_file, *tests = sys.argv[1:]
    sys.path.insert(0, str(Path("src").resolve()))  # the mutated package, not the checkout's
    os.environ.pop("PYTHONPATH", None)
    import pytest

    args = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir=.", *tests]
    tests_by_function = collect_coverage(pytest, args)  # the clean code passes; every module imported here
    os.environ["MUTANT_UNDER_TEST"] = "fail"
    if pytest.main(args) == 0:
        sys.exit("the given tests do not reach the mutated code")
    done = set()
    if os.path.exists(out_file):
        done = {line.split(":")[0] for line in open(out_file)}
    names = [n.strip() for n in open(names_file) if n.strip() and n.strip() not in done]
    timeout, workers = float(os.environ.get("TIMEOUT", 300)), int(os.environ.get("WORKERS", 2))
    running: dict[int, tuple[str, float]] = {}
    with open(out_file, "a") as out:
        while names or running:
            while names and len(running) < workers:
                name = names.pop(0)
                reached = sorted(tests_by_function.get(name.partition("__mutmut_")[0], ()))
                if not reached:
                    out.write(f"{name}: no tests\n")
                    continue
                pid = os.fork()
                if pid == 0:
                    os.environ["MUTANT_UNDER_TEST"] = name
                    sys.stdout = sys.stderr = open(os.devnull, "w")
                    os._exit(int(pytest.main([*args[:-len(tests)], *reached])))
                running[pid] = (name, time.time())
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                for pid, (name, start) in list(running.items()):
                    if time.time() - start > timeout:
                        os.kill(pid, 9)
                        os.waitpid(pid, 0)
                        del running[pid]
                        out.write(f"{name}: timeout\n")
                        out.flush()
                time.sleep(0.05)
                continue
            name, _ = running.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            out.write(f"{name}: {'survived' if code == 0 else 'killed'}\n")
            out.flush()


if __name__ == "__main__":
    main()
