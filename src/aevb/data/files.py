"""Finding data files, and downloading them with their sha256 checked.

Look-up order: an explicit ``data_dir`` (``--data-dir``), then ``$AEVB_DATA_DIR``,
then the cache folder (``$XDG_CACHE_HOME/aevb`` or ``~/.cache/aevb``). A missing file
is downloaded into the first of those folders; it is streamed to a temporary file in
the same folder, hashed on the way, and renamed into place only when its sha256
matches, so a failed or corrupt download never leaves a partial file behind.
``$AEVB_DATA_MIRROR`` (a base URL) replaces the canonical homes, e.g. for a local
mirror.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """A data file is missing, corrupt, or not of the expected format."""


@dataclass(frozen=True)
class FileSpec:
    """One data file: where it lives relative to a data folder, and its sha256.

    ``alternates`` are other accepted forms of the same content (relative path and
    sha256), e.g. a gzip-compressed copy of an original text file. A checksum written
    ``md5:HEX`` is an MD5 instead, for a file whose only published checksum is one (dSprites).
    """

    path: str
    sha256: str
    urls: tuple[str, ...] = ()
    alternates: tuple[tuple[str, str], ...] = field(default=())


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aevb"


def search_dirs(data_dir: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("AEVB_DATA_DIR"):
        dirs.append(Path(os.environ["AEVB_DATA_DIR"]))
    dirs.append(cache_dir())
    return dirs


def _hasher(checksum: str):
    """A fresh hash object for ``checksum`` (sha256, or md5 for ``md5:HEX``), and the hex digest it must give."""
    if checksum.startswith("md5:"):
        return hashlib.md5(usedforsecurity=False), checksum[4:]
    return hashlib.sha256(), checksum


def sha256_of(path: Path, chunk: int = 1 << 20, checksum: str = "") -> str:
    """The file's sha256 (its MD5 when ``checksum`` is an ``md5:`` one)."""
    h = _hasher(checksum)[0]
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, sha256: str) -> None:
    got, want = sha256_of(path, checksum=sha256), _hasher(sha256)[1]
    if got != want:
        kind = "md5" if sha256.startswith("md5:") else "sha256"
        raise DataError(
            f"{path}: {kind} mismatch (expected {want[:12]}..., got {got[:12]}...): the file is corrupt or "
            "truncated; delete it so that aevb can download it again, or replace it with the original")


def locate(spec: FileSpec, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The verified local path of ``spec`` (or of one of its alternates), downloading if allowed."""
    dirs = search_dirs(data_dir)
    for d in dirs:
        for rel, sha in ((spec.path, spec.sha256), *spec.alternates):
            p = d / rel
            if p.is_file():
                verify(p, sha)
                return p
    looked = ", ".join(str(d) for d in dirs)
    if not download:
        raise DataError(f"{spec.path} not found in {looked}; give the folder that holds it as data_dir "
                        "(--data-dir on the command line) or in AEVB_DATA_DIR, or allow downloading")
    return fetch(spec, dirs[0])


def _urls(spec: FileSpec) -> list[str]:
    mirror = os.environ.get("AEVB_DATA_MIRROR")
    if mirror:
        return [mirror.rstrip("/") + "/" + spec.path]
    return list(spec.urls)


def fetch(spec: FileSpec, folder: Path, timeout: float = 60.0) -> Path:
    """Download ``spec`` into ``folder`` and verify it; leave nothing behind on failure."""
    urls = _urls(spec)
    if not urls:
        raise DataError(f"{spec.path} is missing and has no download address; put the file in {folder}")
    dest = folder / spec.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            h, want = _hasher(spec.sha256)
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                expected_len = resp.headers.get("Content-Length")
                n = 0
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    n += len(block)
                out.flush()
                os.fsync(out.fileno())
            if expected_len is not None and n != int(expected_len):
                raise DataError(f"download of {url} was truncated ({n} of {expected_len} bytes)")
            if h.hexdigest() != want:
                kind = "md5" if spec.sha256.startswith("md5:") else "sha256"
                raise DataError(f"download of {url} has {kind} {h.hexdigest()[:12]}..., expected "
                                f"{want[:12]}...: corrupt or not the original file")
            os.replace(tmp, dest)
            return dest
        except (OSError, urllib.error.URLError, DataError) as e:
            errors.append(f"{url}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    raise DataError(f"could not download {spec.path} ({'; '.join(errors)}); put the file in {folder} by hand "
                    "or set AEVB_DATA_DIR to a folder that has it")
