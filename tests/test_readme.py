"""Every command of README.md runs: each fenced ``bash`` command and each ``python`` block, in a cheap
version (a small ``--subset``, one epoch, a small ``--budget``), in README order in one folder, as a
reader would run them.

``CHEAP`` maps each README command, as the README spells it (backslash continuations joined, the
comment dropped, one entry per ``&&``-separated part), to the flags that make it cheap, or to a
``Skip`` with the reason it cannot run here. ``test_every_readme_command_has_a_cheap_version``
fails for a README command without an entry (add one), and warns of an entry the README does not
have (its test is skipped).
Commands that read a run directory name it in ``needs``; the README command that writes it (its
``--out``) runs first when it has not yet, so any one test runs alone too (``-k``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from .conftest import REPO

README = REPO / "README.md"
FLAG = None  # a flag without a value, e.g. --no-figures
DROP = object()  # remove the flag (and its value)


@dataclass
class Cheap:
    """How to run a README command cheaply: ``flags`` set (replacing the value the README gives, added
    when absent; FLAG for a bare flag, DROP to remove one), run directories it ``needs``, files to
    create first (``setup(folder)``), ``slow`` for the pytest mark."""

    flags: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None
    slow: bool = False


@dataclass
class Skip:
    reason: str


@dataclass
class PythonBlock:
    """A README python block, keyed by its first line: text replacements (each must apply) and code
    run before it (what the README leaves to the reader, e.g. a class it does not show)."""

    replace: tuple[tuple[str, str], ...] = ()
    prelude: str = ""
    slow: bool = False


QUIET = {"--no-progress": FLAG, "--no-figures": FLAG}
MNIST = {"--subset": "1000", "--epochs": "1", **QUIET}  # seconds, not minutes


def _mnist_image(index_of_label: int | None, name: str, noise: str | None = None):
    """setup: write one MNIST test image (the first of a label, else the first) as NAME in the folder."""

    def write(folder: Path) -> None:
        import torch

        from aevb.config import DataConfig
        from aevb.corruption import corrupt
        from aevb.data import load_dataset
        from aevb.images import write_image

        test = load_dataset(DataConfig(dataset="mnist")).test
        x = test.x[0] if index_of_label is None else test.x[test.y == index_of_label][0]
        if noise:
            x = corrupt(x, noise, torch.Generator().manual_seed(0))
        write_image(x, folder / name)

    return write


def _photos(folder: Path) -> None:
    """setup: a folder of 30 small RGB photos in two labelled sub-folders, of several sizes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(30):
        sub = folder / "photos" / ("cats" if k % 2 else "dogs")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = (48, 64) if k % 3 else (80, 80)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"{k}.png")


INSTALL = Skip("installs packages: these tests run inside that installation")
CHEAP: dict[str, Cheap | Skip] = {
    "pip install torch==2.13.0": INSTALL,
    "pip install -e .": INSTALL,
    "pip install -e .[test]": INSTALL,
    "python -m pytest --durations=15": Skip("runs the whole test suite, this file included"),
    "aevb train --dataset digits --epochs 100 --out runs/digits": Cheap({"--epochs": "3", "--no-progress": FLAG}),
    "aevb sample runs/digits": Cheap(needs=("runs/digits",)),
    "aevb reconstruct runs/digits": Cheap(needs=("runs/digits",)),
    "aevb train --dataset mnist --binarize dynamic --hidden 400 --latent-dim 20 --optimizer adam --lr 1e-3 "
    "--batch-size 128 --epochs 10 --out runs/mnist": Cheap(MNIST),
    "aevb evaluate runs/mnist --k 1000": Cheap({"--k": "10", "--n": "100", "--no-probe": FLAG}, needs=("runs/mnist",)),
    "aevb evaluate runs/mnist --k 1000 --json": Cheap({"--k": "10", "--n": "100", "--no-probe": FLAG},
                                                      needs=("runs/mnist",)),
    "aevb train --dataset mnist --binarize dynamic --hidden 500 --activation tanh --latent-dim 20 --optimizer adagrad "
    "--lr 0.02 --batch-size 100 --init-std 0.01 --weight-decay 1e-4 --out runs/paper-mnist": Cheap(MNIST, slow=True),
    "aevb train --dataset frey_face --likelihood gaussian --hidden 200 --activation tanh --latent-dim 10 "
    "--optimizer adagrad --lr 0.02 --batch-size 100 --init-std 0.01 --epochs 1000 --out runs/frey":
        Cheap({"--epochs": "2", **QUIET}, slow=True),
    "aevb train --dataset mnist --binarize dynamic --model ae --out runs/mnist-ae": Cheap(MNIST, slow=True),
    "aevb train --resume runs/mnist --epochs 20": Cheap({"--epochs": "2", **QUIET}, needs=("runs/mnist",), slow=True),
    # torchrun with the gloo backend: two CPU processes work here
    "aevb train --nproc 2 --dataset mnist --binarize dynamic --batch-size 128 --out runs/mnist-2p":
        Cheap(MNIST, slow=True),
    "aevb train --dataset mnist --binarize dynamic --beta 4 --out runs/beta4": Cheap(MNIST, slow=True),
    "aevb train --dataset mnist --binarize dynamic --kl-schedule linear --warmup-steps 5000 --out runs/warmup":
        Cheap({**MNIST, "--warmup-steps": "5"}, slow=True),
    "aevb train --dataset mnist --binarize dynamic --free-bits 0.25 --out runs/free-bits": Cheap(MNIST, slow=True),
    "aevb train --dataset mnist --binarize dynamic --objective iwae --iwae-k 5 --out runs/iwae": Cheap(MNIST, slow=True),
    "aevb train --dataset binarized_mnist --algorithm wake-sleep --hidden 500 --activation tanh --optimizer adagrad "
    "--lr 0.02 --out runs/wake-sleep": Cheap(MNIST, slow=True),
    "aevb reproduce figure2 --dataset frey_face --budget 1000000":
        Cheap({"--budget": "2000", "--nz": "2", "--lr": "0.02", "--points": "2", "--n-eval": "50"}, slow=True),
    "aevb plot runs/mnist --kind manifold --dims 0,1": Cheap({"--n": "5"}, needs=("runs/mnist",)),
    "aevb plot runs/mnist --kind manifold --grid 20": Cheap({"--grid": "5"}, needs=("runs/mnist",)),
    "aevb train --dataset mnist --binarize dynamic --epochs 100 --lr-schedule cosine --lr-warmup-steps 500 "
    "--patience 10 --figures-every 5 --mlflow runs/mlruns --out runs/mnist-cos":
        Cheap({**MNIST, "--epochs": "2", "--lr-warmup-steps": "5", "--figures-every": "1"}, slow=True),
    "aevb report runs/mnist": Cheap(needs=("runs/mnist",)),
    "aevb explain": Cheap(),
    "aevb serve runs/mnist": Cheap(needs=("runs/mnist",)),  # started, asked for /api/info, stopped
    "aevb train --dataset mnist --binarize dynamic --hidden 400 --latent-dim 20 --input-noise gaussian:0.5 "
    "--out runs/mnist-dvae": Cheap(MNIST),
    "aevb denoise runs/mnist-dvae scan.png": Cheap(needs=("runs/mnist-dvae",),
                                                   setup=_mnist_image(None, "scan.png", noise="gaussian:0.5")),
    "aevb denoise runs/mnist-dvae --test 10": Cheap(needs=("runs/mnist-dvae",)),
    "aevb edit runs/mnist --image three.png --toward 8 --amount 1.0": Cheap({"--n": "500"}, needs=("runs/mnist",),
                                                                            setup=_mnist_image(3, "three.png")),
    "aevb train --dataset folder:photos --image-size 64 --architecture conv --likelihood discretized_logistic "
    "--out runs/photos": Cheap({"--image-size": "16", "--conv-channels": "4", "--batch-size": "8", "--epochs": "1",
                                **QUIET}, setup=_photos, slow=True),
    "aevb train --dataset mnist --binarize dynamic --conditional --out runs/cmnist": Cheap(MNIST, slow=True),
    "aevb sample runs/cmnist --label 7": Cheap(needs=("runs/cmnist",), slow=True),
    # The README's "Model zoo" (on main, merged after this file was written; flags from its CLI).
    "aevb train --dataset mnist --binarize dynamic --hidden 300,300 --latent-dim 40 --prior vamp "
    "--prior-components 500 --out runs/vamp": Cheap({**MNIST, "--prior-components": "10"}, slow=True),
    "aevb train --dataset mnist --binarize dynamic --hidden 200,200 --activation tanh --latent-dim 100 "
    "--stochastic-layers 2 --top-latent-dim 50 --top-hidden 100,100 --objective iwae --iwae-k 50 --out runs/iwae2":
        Cheap({**MNIST, "--iwae-k": "5"}, slow=True),
    "aevb evaluate runs/vamp --k 5000": Cheap({"--k": "10", "--n": "100", "--no-probe": FLAG}, needs=("runs/vamp",),
                                              slow=True),
    "aevb reproduce zoo --out results/zoo": Skip("the full recipes take days of CPU; the quick command below "
                                                 "runs the same code"),
    "aevb reproduce zoo --rows vae-1l,iwae-1l --budget 3 --k 1000 --n-test 1000 --out results/zoo-quick":
        Cheap({"--rows": "vae-1l", "--budget": "1", "--k": "10", "--n-test": "100", "--subset": "500"}, slow=True),
}

MY_DECODER = '''
import torch
import aevb

class MyDecoder(torch.nn.Module):
    def __init__(self, latent_dim, width=64):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.body = torch.nn.Sequential(torch.nn.Linear(latent_dim, width), torch.nn.ReLU(), torch.nn.Linear(width, 784))

    def forward(self, z):                                         # z: (..., latent_dim)
        return self.body(z).unflatten(-1, (1, 28, 28))            # Bernoulli logits
'''
PYTHON: dict[str, PythonBlock] = {
    "import aevb": PythonBlock(replace=(("epochs=100", "epochs=2"), ("k=1000", "k=10"),
                                        ('model="ae",', 'model="ae", epochs=1,'),
                                        ("conditional=True,", "conditional=True, epochs=1,"))),
    "class MyEncoder(torch.nn.Module):": PythonBlock(
        replace=(('binarize="dynamic", latent_dim=20,', 'binarize="dynamic", latent_dim=20, epochs=1, subset=500,'),),
        prelude=MY_DECODER, slow=True),
}


# --- reading the README -------------------------------------------------------------------------


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def bash_commands(body: str) -> list[list[str]]:
    """The commands of a bash block as word lists: continuations joined, comments dropped, split at &&."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        words: list[str] = []
        for word in shlex.split(line, comments=True) + ["&&"]:
            if word == "&&":
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(word)
    return commands


def readme_commands() -> dict[str, list[str]]:
    """Each README bash command by its key (its words joined by spaces), in README order."""
    out: dict[str, list[str]] = {}
    for lang, body in fenced_blocks(README.read_text()):
        if lang in ("bash", "sh", "shell", "console"):
            for words in bash_commands(body):
                out.setdefault(" ".join(words), words)
    return out


def readme_python_blocks() -> dict[str, str]:
    """Each README python block by its first non-empty line."""
    return {next(line for line in body.splitlines() if line.strip()): body
            for lang, body in fenced_blocks(README.read_text()) if lang in ("python", "py")}


def cheapen(words: list[str], flags: dict) -> list[str]:
    """The command with ``flags`` set: a flag given a value replaces the README's value, FLAG adds a bare
    flag, DROP removes a flag and its value; flags the command lacks are appended."""
    out, i, seen = [], 0, set()
    while i < len(words):
        word = words[i]
        name = word.split("=", 1)[0]
        if name in flags:
            seen.add(name)
            has_value = "=" not in word and i + 1 < len(words) and not words[i + 1].startswith("--")
            value = flags[name]
            if value is not DROP:
                out += [name] if value is FLAG else [name, value]
            i += 2 if has_value else 1
            continue
        out.append(word)
        i += 1
    for name, value in flags.items():
        if name not in seen and value is not DROP:
            out += [name] if value is FLAG else [name, value]
    return out


# --- running them ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.fixture
def folder(shared_folder, data_dir):
    """The one folder every README command runs in (data from $AEVB_DATA_DIR)."""
    return shared_folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(words: list[str], cwd: Path) -> None:
    """Start `aevb serve`, wait for /api/info to answer, stop it."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aevb", *words[1:], "--port", str(port)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2) as res:
                    assert res.status == 200
                    return
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"aevb serve did not answer: {proc.stdout.read()[-2000:]}")
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def run_words(words: list[str], cwd: Path) -> None:
    """Run one command in ``cwd``: `aevb ...` in this process (no interpreter start-up; `--nproc` still
    launches torchrun), `aevb serve` as a server it stops again."""
    if words[:2] == ["aevb", "serve"]:
        return _serve(words, cwd)
    assert words[0] == "aevb", f"the README test runs aevb commands; add a runner for {words[0]!r}"
    from aevb.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(words[1:])
    finally:
        os.chdir(previous)
    assert rc == 0, f"{shlex.join(words)} failed ({rc}):\n{err.getvalue()[-3000:]}"


def run_cheap(key: str, cwd: Path) -> None:
    """Run README command ``key`` cheaply, after the commands that write the run directories it needs."""
    entry = CHEAP[key]
    assert isinstance(entry, Cheap)
    for needed in entry.needs:
        if not (cwd / needed / "model.safetensors").exists():
            run_cheap(_writer_of(needed), cwd)
    if entry.setup is not None:
        entry.setup(cwd)
    run_words(cheapen(readme_commands()[key], entry.flags), cwd)


def _writer_of(run_dir: str) -> str:
    """The README command that writes ``run_dir`` (its --out)."""
    for key, words in readme_commands().items():
        if words[:2] == ["aevb", "train"] and "--out" in words and words[words.index("--out") + 1] == run_dir:
            return key
    raise AssertionError(f"no README command writes {run_dir}")


# --- the tests ------------------------------------------------------------------------------------


def test_every_readme_command_has_a_cheap_version():
    commands, blocks = readme_commands(), readme_python_blocks()
    assert len(commands) >= 20 and blocks  # the extraction found the README's commands
    missing = [key for key in commands if key not in CHEAP]
    assert not missing, f"README commands without a cheap version in CHEAP (tests/test_readme.py): {missing}"
    stale = [key for key in CHEAP if key not in commands]
    if stale:  # not a failure: entries may be written for README sections still on other branches
        warnings.warn(f"CHEAP entries the README does not have (yet, or any more): {stale}", stacklevel=1)
    assert sorted(blocks) == sorted(PYTHON), "every README python block needs a PYTHON entry (by its first line)"
    for key, entry in CHEAP.items():
        if isinstance(entry, Cheap) and key in commands:
            for needed in entry.needs:
                _writer_of(needed)  # some README command writes it


def test_cheapen():
    words = ["aevb", "train", "--epochs", "100", "--out", "runs/x", "--beta=4", "--compile"]
    assert cheapen(words, {"--epochs": "1", "--beta": "2", "--compile": DROP, "--no-figures": FLAG}) == [
        "aevb", "train", "--epochs", "1", "--out", "runs/x", "--beta", "2", "--no-figures"]
    assert bash_commands("a --x 1 \\\n  --y 2   # note\nb && c 'd e'\n") == [["a", "--x", "1", "--y", "2"], ["b"],
                                                                           ["c", "d e"]]


def _params():
    params = []
    for key, entry in CHEAP.items():
        marks = [pytest.mark.slow] if isinstance(entry, Cheap) and entry.slow else []
        if isinstance(entry, Skip):
            marks = [pytest.mark.skip(reason=entry.reason)]
        params.append(pytest.param(key, marks=marks, id=key[:80]))
    return params


@pytest.mark.parametrize("key", _params())
def test_readme_command(key, folder):
    if key not in readme_commands():
        pytest.skip("not in the README (yet, or any more)")
    run_cheap(key, folder)


def _python_params():
    return [pytest.param(first, marks=[pytest.mark.slow] if block.slow else [], id=first[:40])
            for first, block in PYTHON.items()]


@pytest.mark.parametrize("first", _python_params())
def test_readme_python_block(first, folder):
    body = readme_python_blocks().get(first)
    if body is None:
        pytest.skip("not in the README (yet, or any more)")
    block = PYTHON[first]
    for old, new in block.replace:
        assert old in body, f"the README block {first!r} no longer contains {old!r}: update PYTHON"
        body = body.replace(old, new)
    script = folder / f"readme_block_{abs(hash(first))}.py"
    script.write_text(block.prelude + "\n" + body)
    proc = subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, f"README block {first!r} failed:\n{proc.stderr[-3000:]}"
