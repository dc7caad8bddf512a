"""Shared fixtures. Real data sets are read from $AEVB_DATA_DIR (``.ci/run`` points it at
../shared/data); when unset, the ``shared/data`` folder beside the repository is used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if not os.environ.get("AEVB_DATA_DIR"):
    default = REPO.parent / "shared" / "data"
    if default.is_dir():
        os.environ["AEVB_DATA_DIR"] = str(default)
DATA_DIR = Path(os.environ["AEVB_DATA_DIR"]) if os.environ.get("AEVB_DATA_DIR") else None


@pytest.fixture
def data_dir() -> Path:
    if DATA_DIR is None or not (DATA_DIR / "mnist").is_dir():
        if os.environ.get("CI"):
            pytest.fail("AEVB_DATA_DIR must point at the shared data folder in CI")
        pytest.skip("real data sets not found: set AEVB_DATA_DIR to the shared data folder")
    return DATA_DIR


def run_cli(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m aevb ARGS`` as a user would, returning the completed process."""
    proc = subprocess.run([sys.executable, "-m", "aevb", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and proc.returncode != 0:
        raise AssertionError(f"aevb {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
