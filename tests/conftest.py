"""Shared fixtures. Real data sets are read from $AEVB_DATA_DIR (``.ci/run`` points it at
../shared/data); when unset, the ``shared/data`` folder beside the repository is used.

Without the data sets every test that needs them skips, saying why (the ``data_dir`` fixture);
in CI (``CI`` set) it fails instead, since CI is given the data, unless ``AEVB_NO_DATA=1`` says
that this pass runs without them on purpose (``.ci/run``'s second pass): then the data are
hidden from the tests even when a folder is configured.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NO_DATA = os.environ.get("AEVB_NO_DATA") == "1"  # no data expected: skip, even in CI
if NO_DATA:
    os.environ.pop("AEVB_DATA_DIR", None)
elif not os.environ.get("AEVB_DATA_DIR"):
    default = REPO.parent / "shared" / "data"
    if default.is_dir():
        os.environ["AEVB_DATA_DIR"] = str(default)
DATA_DIR = Path(os.environ["AEVB_DATA_DIR"]) if os.environ.get("AEVB_DATA_DIR") else None


def has_real_data() -> bool:
    """Whether the real data sets are there (the ``data_dir`` fixture's test, for ``skipif``)."""
    return DATA_DIR is not None and (DATA_DIR / "mnist").is_dir()


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "needs_data: uses the real data sets (given to every test that takes the "
                            "data_dir fixture)")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.needs_data)


@pytest.fixture
def data_dir() -> Path:
    if not has_real_data():
        if NO_DATA:
            pytest.skip("AEVB_NO_DATA=1: this pass runs without the real data sets")
        if os.environ.get("CI"):
            pytest.fail("AEVB_DATA_DIR must point at the shared data folder in CI (or set AEVB_NO_DATA=1 "
                        "for a pass without data)")
        pytest.skip("real data sets not found: set AEVB_DATA_DIR to the shared data folder")
    return DATA_DIR


def run_cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m aevb ARGS`` as a user would, returning the completed process."""
    proc = subprocess.run([sys.executable, "-m", "aevb", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"aevb {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
