"""The explorer as a real server process: a bounded load test, and a sweep of malformed and hostile requests.

One ``python -m aevb serve RUN --host 127.0.0.1 --port P`` (started by ``benchmarks/explorer_load.py``'s
``serve``) on a tiny model trained on the embedded digits, shared by the module. A ``sitecustomize.py``
put first on the server's PYTHONPATH installs a Python audit hook (PEP 578) that logs every file the
server process opens, creates, removes, renames or lists, and every process it starts: the sweep checks
from that log that no request parameter reaches the file system.

The sweep's cases are the table in docs/reliability.md ("The explorer under attack").
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import sys
import sysconfig
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from .conftest import REPO  # noqa: E402
from .imagefiles import PNG_SIGNATURE, image_bytes, png_chunk, png_file, zeros_png  # noqa: E402
from .vizmodels import digits_run  # noqa: E402

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("explorer_load", REPO / "benchmarks" / "explorer_load.py")
explorer_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(explorer_load)

AUDIT_HOOK = '''\
import json, os, sys

_log = os.environ.get("AEVB_AUDIT_LOG")
if _log:
    _fd = os.open(_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _audit(event, args):
        if event == "open" or event.startswith(("os.", "shutil.", "subprocess.")):
            plain = [a if isinstance(a, (str, int, type(None))) else repr(a) for a in args]
            os.write(_fd, (json.dumps([event, plain]) + "\\n").encode())  # os.write is not audited itself

    sys.addaudithook(_audit)
'''
ATTACK_MARKERS = ("passwd", "/etc", "win.ini", "\x00", "%00", "..")


@dataclass
class Live:
    url: str
    proc: object
    log: Path
    audit: Path
    cwd: Path
    run_dir: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    run = digits_run(2)
    tmp = tmp_path_factory.mktemp("live")
    (tmp / "hook").mkdir()
    (tmp / "hook" / "sitecustomize.py").write_text(AUDIT_HOOK)
    (tmp / "cwd").mkdir()
    path = os.pathsep.join(p for p in (str(tmp / "hook"), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "AEVB_AUDIT_LOG": str(tmp / "audit.jsonl"), "PYTHONDONTWRITEBYTECODE": "1"}
    with explorer_load.serve(run.dir, env=env, cwd=tmp / "cwd", log=tmp / "server.log") as (url, proc):
        live = Live(url, proc, tmp / "server.log", tmp / "audit.jsonl", tmp / "cwd", run.dir)
        warm_up(live)
        yield live


def warm_up(live: Live) -> None:
    """Every endpoint once, valid: the lazy imports and the test set's first read happen here, not in the sweep."""
    with httpx.Client(base_url=live.url, timeout=30) as c:
        for path in ("/", "/app.js", "/app.css", "/api/info", "/api/map"):
            assert c.get(path).status_code == 200, path
        for path, body in (("/api/decode", {"z": [0.0, 0.0]}), ("/api/sample", {"seed": 1}),
                           ("/api/encode", {"pixels": [0.5] * 64}),
                           ("/api/interpolate", {"a": [0, 0], "b": [1, 1], "steps": 3})):
            assert c.post(path, json=body).status_code == 200, path
        for fmt in ("PNG", "JPEG"):
            res = c.post("/api/encode-image", content=image_bytes(np.zeros((16, 16), np.uint8), fmt),
                         headers={"content-type": f"image/{fmt.lower()}"})
            assert res.status_code == 200, res.text


def audit_events(live: Live) -> list[tuple[str, list]]:
    return [tuple(json.loads(line)) for line in live.audit.read_text().splitlines()]


def decodes(client: httpx.Client) -> bool:
    """The server is alive and right: a valid decode answers a PNG of the model's 8 x 8 shape."""
    return explorer_load.check_png(client.post("/api/decode", json={"z": [0.3, -0.7]}), (1, 8, 8)) is None


# --- the load test -----------------------------------------------------------------------------


def test_8_clients_5000_decodes_without_an_error(live, record_property):
    result = explorer_load.run_load(live.url, clients=8, requests=5000)
    print(json.dumps(result))
    for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "throughput_rps", "wall_s"):
        record_property(key, result[key])
    assert result["errors"] == 0, result["error_examples"]
    assert result["answered"] == 5000
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["p50_ms"] < 500, "half the requests waited over half a second: something serialises them"
    assert live.proc.poll() is None


# --- the attack sweep --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad request and the status it must get. ``raw`` bytes go over a plain socket, as written."""

    group: str
    name: str
    status: int
    method: str = "POST"
    path: str = "/api/decode"
    body: bytes | None = None
    ctype: str | None = "application/json"
    raw: bytes | None = None


def js(group: str, name: str, status: int, text: str | bytes, path: str = "/api/decode",
       ctype: str | None = "application/json") -> Case:
    return Case(group, name, status, "POST", path, text.encode() if isinstance(text, str) else text, ctype)


def upload(name: str, status: int, data: bytes, ctype: str | None = "image/png", query: str = "",
           group: str = "image upload") -> Case:
    return Case(group, name, status, "POST", "/api/encode-image" + query, data, ctype)


def raw(group: str, name: str, status: int, request: bytes) -> Case:
    return Case(group, name, status, raw=request)


def get(group: str, name: str, status: int, path: str, method: str = "GET") -> Case:
    return Case(group, name, status, method, path, None, None)


def http_get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def post_head(headers: bytes) -> bytes:
    return b"POST /api/decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + headers + b"\r\n"


_rng = np.random.default_rng(0)
_PNG = image_bytes((_rng.random((40, 30)) * 255).astype(np.uint8))
_JPEG = image_bytes((_rng.random((40, 30, 3)) * 255).astype(np.uint8), "JPEG")
_ROWS = zlib.compress(b"".join(b"\0" + bytes(range(16)) for _ in range(16)))
_BIG = 20 * 1024 * 1024
_TEXT_BOMB = b"k\0\0" + zlib.compress(b"a" * 50_000_000, 9)  # keyword, NUL, method 0, 50 MB of text in 50 kB


def _other_format(fmt: str) -> bytes:
    buf = io.BytesIO()
    from PIL import Image

    Image.new("L", (8, 8)).save(buf, format=fmt)
    return buf.getvalue()


_AB = '"a": [0, 0], "b": [1, 1]'  # interpolation end points that are fine
_OBJECT = '{"z": [0, 0]}'

CASES = [
    # malformed JSON
    js("malformed JSON", "not JSON: {not json", 422, "{not json"),
    js("malformed JSON", "truncated: {\"z\": [0, 0]", 422, '{"z": [0, 0]'),
    js("malformed JSON", "trailing garbage after the object", 422, '{"z": [0, 0]} x'),
    js("malformed JSON", "empty body", 422, ""),
    js("malformed JSON", "invalid UTF-8 bytes", 422, b"\xff\xfe\xfa\x00"),
    js("malformed JSON", "a NUL byte inside", 422, b'{"z": [0,\x00 0]}'),
    js("malformed JSON", "100 000 nested [ (past the parser's recursion limit)", 400, "[" * 100_000),
    js("malformed JSON", "a 5000-digit integer (past Python's 4300-digit limit)", 400,
       '{"z": [1' + "0" * 5000 + ", 0]}"),
    js("malformed JSON", "an array instead of an object", 422, "[0, 0]"),
    js("malformed JSON", "null instead of an object", 422, "null"),
    js("malformed JSON", "a string instead of an object", 422, '"z"'),
    # wrong content types
    *(js("content type", f"/api/decode as {ct or 'no Content-Type'}", 415, _OBJECT, ctype=ct)
      for ct in (None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/xml", "image/png")),
    js("content type", "/api/sample as text/plain", 415, "{}", "/api/sample", "text/plain"),
    *(upload(f"/api/encode-image as {ct or 'no Content-Type'}", 415, _PNG, ct, group="content type")
      for ct in (None, "application/json", "text/plain", "image/gif", "image/svg+xml")),
    # wrong types, field by field; then values of the right type that are out of range
    *(js("wrong type", f"z = {text}", 422, f'{{"z": {text}}}')
      for text in ('"0, 0"', "3", "null", "true", '{"0": 1}', "[[0], [0]]", "[null, 0]", '["1.5", 0]',
                   "[true, false]", '[{"x": 1}, 0]')),
    js("wrong type", "no z at all: {}", 422, "{}"),
    js("wrong type", "an extra field next to z", 422, '{"z": [0, 0], "debug": true}'),
    *(js("wrong type", f"seed = {text}", 422, f'{{"seed": {text}}}', "/api/sample")
      for text in ('"3"', "3.5", "3.0", "true", "[3]", "{}", "NaN", "1e30")),
    *(js("wrong type", f"pixels = {name}", 422, f'{{"pixels": {text}}}', "/api/encode")
      for name, text in (('"0.5"', '"0.5"'), ("null", "null"), ("[[64 numbers]]", json.dumps([[0.5] * 64])),
                         ("64 x true", json.dumps([True] * 64)), ('64 x "0.5"', json.dumps(["0.5"] * 64)),
                         ("63 numbers and null", json.dumps([0.5] * 63 + [None])))),
    *(js("wrong type", f"interpolate {name}", 422, text, "/api/interpolate")
      for name, text in (('a = "x"', '{"a": "x", "b": [0, 0]}'), ("b = null", '{"a": [0, 0], "b": null}'),
                         ("a = [[0, 0]]", '{"a": [[0, 0]], "b": [0, 0]}'), ("no b", '{"a": [0, 0]}'),
                         *((f"steps = {v}", f'{{{_AB}, "steps": {v}}}') for v in ('"5"', "5.5", "true", "null")))),
    *(js("out of range", f"z = {text}", 400, f'{{"z": {text}}}')
      for text in ("[NaN, 0]", "[Infinity, 0]", "[0, -Infinity]", "[1e400, 0]", "[1e6, 0]")),
    *(js("out of range", f"seed = {name}", 400, f'{{"seed": {text}}}', "/api/sample")
      for name, text in (("-1", "-1"), ("2**63", str(2**63)), ("10**30", "1" + "0" * 30),
                         ("10**4000", "1" + "0" * 4000))),
    *(js("out of range", f"pixels = {name}", 400, f'{{"pixels": {text}}}', "/api/encode")
      for name, text in (("63 values", json.dumps([0.5] * 63)), ("65 values", json.dumps([0.5] * 65)),
                         ("64 x 2.0", json.dumps([2.0] * 64)), ("64 x -0.5", json.dumps([-0.5] * 64)),
                         ("NaN among 64", "[NaN" + ", 0.5" * 63 + "]"))),
    *(js("out of range", f"interpolate {name}", 400, text, "/api/interpolate")
      for name, text in (("a of 3 values", '{"a": [0, 0, 0], "b": [0, 0]}'),
                         ("b = [NaN, 0]", '{"a": [0, 0], "b": [NaN, 0]}'),
                         *((f"steps = {n}", f'{{{_AB}, "steps": {v}}}')
                           for n, v in (("0", "0"), ("-3", "-3"), ("33", "33"), ("10**30", "1" + "0" * 30))))),
    # wrong latent length, enormous latent arrays
    *(js("latent length", f"z of {n} values", 400, json.dumps({"z": [0.0] * n})) for n in (0, 1, 3, 1000)),
    js("latent length", "z of 200 000 values (1 MB, under the body limit)", 400, json.dumps({"z": [0.0] * 200_000})),
    js("latent length", "interpolate with a of 200 000 values", 400,
       json.dumps({"a": [0.0] * 200_000, "b": [0, 0]}), "/api/interpolate"),
    js("latent length", "z of 1 100 000 values (2.2 MB, over the body limit)", 413,
       '{"z": [' + "0," * 1_099_999 + "0]}"),
    # oversized bodies, and bodies whose size is not declared or declared wrongly
    *(js("body size", f"20 MB to {path}", 413, b"0" * _BIG, path)
      for path in ("/api/decode", "/api/sample", "/api/encode", "/api/interpolate", "/api/nope")),
    upload("20 MB PNG-headed bytes", 413, PNG_SIGNATURE + bytes(_BIG), group="body size"),
    js("body size", "2 MiB + 1 byte", 413, b" " * (2 * 1024 * 1024 + 1)),
    raw("body size", "Transfer-Encoding: chunked, no Content-Length", 411,
        post_head(b"Transfer-Encoding: chunked\r\n") + b"1000\r\n" + b"0" * 4096 + b"\r\n"),
    raw("body size", "Content-Length: 10**22 (uvicorn's parser)", 400,
        post_head(b"Content-Length: 1" + b"0" * 22 + b"\r\n")),
    raw("body size", "Content-Length: abc", 400, post_head(b"Content-Length: abc\r\n")),
    raw("body size", "Content-Length: -5", 400, post_head(b"Content-Length: -5\r\n")),
    raw("body size", "two different Content-Length headers", 400,
        post_head(b"Content-Length: 13\r\nContent-Length: 14\r\n") + _OBJECT.encode()),
    # huge and broken images
    upload("4097 x 1 PNG (one pixel over the side limit)", 413, zeros_png(4097, 1)),
    upload("10000 x 10000 PNG, 12 kB (under Pillow's bomb limit, over ours)", 413, zeros_png(10_000, 10_000)),
    upload("20000 x 20000 PNG decompression bomb, 48 kB", 413, zeros_png(20_000, 20_000)),
    upload("header claiming 2**31 - 1 square", 413, png_file(2**31 - 1, 2**31 - 1, png_chunk(b"IDAT", _ROWS))),
    upload("header claiming 0 x 0", 415, png_file(0, 0, png_chunk(b"IDAT", _ROWS))),
    upload("zTXt chunk of 50 MB text in 48 kB", 415, zeros_png(16, 16, 8, png_chunk(b"zTXt", _TEXT_BOMB))),
    upload("iCCP profile of 50 MB in 48 kB", 415, zeros_png(16, 16, 8, png_chunk(b"iCCP", _TEXT_BOMB))),
    upload("a chunk of an invalid type between IDATs", 415,
           png_file(16, 16, png_chunk(b"IDAT", _ROWS[:10]) + png_chunk(b"\x00\x01\x02\x03", b"xx")
                    + png_chunk(b"IDAT", _ROWS[10:]))),
    upload("PNG truncated at half", 415, _PNG[: len(_PNG) // 2]),
    upload("JPEG truncated at half", 415, _JPEG[: len(_JPEG) // 2], "image/jpeg"),
    upload("PNG signature then garbage", 415, PNG_SIGNATURE + b"not really a PNG" * 10),
    upload("4 kB of random bytes", 415, _rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
    upload("a GIF labelled image/png", 415, _other_format("GIF")),
    upload("a BMP labelled image/png", 415, _other_format("BMP")),
    upload("a TIFF labelled image/jpeg", 415, _other_format("TIFF"), "image/jpeg"),
    upload("SVG text labelled image/png", 415,
           b'<svg xmlns="http://www.w3.org/2000/svg"><image href="file:///etc/passwd"/></svg>'),
    upload("empty upload", 400, b""),
    # path-like strings wherever a request carries a string
    *(raw("path-like", f"GET {target.decode()} (sent as written)", 404, http_get(target))
      for target in (b"/../../etc/passwd", b"/app.js/../../../etc/passwd", b"//etc/passwd", b"/etc/passwd",
                     b"/%2e%2e/%2e%2e/etc/passwd", b"/..%5c..%5cwindows%5cwin.ini", b"/static/..%2f..%2fapp.py",
                     b"/app.js%00.py", b"http://127.0.0.1/etc/passwd")),
    raw("path-like", "GET /app.js<NUL> (a raw NUL byte in the target)", 400, http_get(b"/app.js\x00")),
    *(upload(f"POST /api/encode-image?invert={q}", 422, _PNG, query=f"?invert={q}", group="path-like")
      for q in ("../../etc/passwd", "/etc/passwd", "%00")),
    js("path-like", 'z = "../../etc/passwd"', 422, '{"z": "../../etc/passwd"}'),
    js("path-like", 'z = ["/etc/passwd", 0]', 422, '{"z": ["/etc/passwd", 0]}'),
    js("path-like", 'z = "file:///etc/passwd"', 422, '{"z": "file:///etc/passwd"}'),
    js("path-like", 'an extra "path": "/etc/passwd" next to z', 422, '{"z": [0, 0], "path": "/etc/passwd"}'),
    js("path-like", 'seed = "/etc/passwd"', 422, '{"seed": "/etc/passwd"}', "/api/sample"),
    js("path-like", 'pixels = "/etc/passwd\\u0000"', 422, '{"pixels": "/etc/passwd\\u0000"}', "/api/encode"),
    js("path-like", 'a = "C:\\\\Windows\\\\win.ini"', 422, '{"a": "C:\\\\Windows\\\\win.ini", "b": [0, 0]}',
       "/api/interpolate"),
    # unknown routes
    *(get("unknown route", f"GET {p}", 404, p) for p in ("/api/nope", "/api", "/docs", "/redoc", "/openapi.json",
                                                        "/index.html", "/app.py", "/static/app.js", "/api/decode/x")),
    js("unknown route", "POST /api/nope", 404, "{}", "/api/nope"),
    # wrong methods
    *(get("wrong method", f"{m} /api/decode", 405, "/api/decode", m)
      for m in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD")),
    get("wrong method", "DELETE /", 405, "/", "DELETE"),
    get("wrong method", "PUT /api/map", 405, "/api/map", "PUT"),
    js("wrong method", "POST /", 405, "{}", "/"),
    js("wrong method", "POST /api/info", 405, "{}", "/api/info"),
    raw("wrong method", "FOO / (an unknown method)", 405,
        b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    raw("not HTTP", "a TLS ClientHello on the plain-HTTP port", 400,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(100)),
]


def send_raw(url: str, request: bytes) -> int:
    """Write ``request`` to the server as is; the status of its answer (0: closed without one)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        head = b""
        while b"\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


@dataclass
class Outcome:
    case: Case
    status: int  # 0: no answer (the connection failed)
    error: str | None  # the answer's {"error": ...} line, when it has one
    alive: bool  # a valid decode right after it answered 200 with the right PNG


def attempt(client: httpx.Client, url: str, case: Case) -> tuple[int, str | None]:
    if case.raw is not None:
        return send_raw(url, case.raw), None
    headers = {"content-type": case.ctype} if case.ctype else {}
    try:
        res = client.request(case.method, case.path, content=case.body, headers=headers)
    except httpx.HTTPError:
        return 0, None
    try:
        return res.status_code, res.json().get("error")
    except ValueError:  # not JSON, e.g. "Internal Server Error" or a HEAD answer's empty body
        return res.status_code, None


@pytest.fixture(scope="module")
def sweep(live):
    """Every case once, each followed by a valid request; the audit events the sweep caused."""
    before = len(audit_events(live))
    run_files = {p: p.stat().st_mtime_ns for p in live.run_dir.rglob("*")}
    outcomes = []
    with httpx.Client(base_url=live.url, timeout=60) as attacker, httpx.Client(base_url=live.url, timeout=60) as user:
        for case in CASES:
            status, message = attempt(attacker, live.url, case)
            try:
                alive = decodes(user)
            except httpx.HTTPError:
                alive = False
            outcomes.append(Outcome(case, status, message, alive))
    time.sleep(0.2)  # the hook writes from the server's threads
    return {"outcomes": outcomes, "events": audit_events(live)[before:], "run_files": run_files}


def test_every_bad_request_gets_its_4xx(sweep):
    wrong = [f"{o.case.group}: {o.case.name}: got {o.status}, expected {o.case.status}"
             for o in sweep["outcomes"] if o.status != o.case.status]
    assert not wrong, "\n".join(wrong)
    assert all(400 <= o.status < 500 for o in sweep["outcomes"])
    assert len(sweep["outcomes"]) > 150


def test_app_rejections_are_one_line_json(sweep):
    for o in sweep["outcomes"]:
        if o.case.raw is None and o.case.method != "HEAD":
            assert o.error and "\n" not in o.error and len(o.error) < 300, (o.case.name, o.error)


def test_the_server_survives_every_bad_request(live, sweep):
    dead = [o.case.name for o in sweep["outcomes"] if not o.alive]
    assert not dead, f"no valid answer after: {dead}"
    assert live.proc.poll() is None
    log = live.log.read_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


def test_no_request_reaches_the_file_system(live, sweep):
    events = sweep["events"]
    named = [e for e in events if any(m in " ".join(map(str, e[1])) for m in ATTACK_MARKERS)]
    assert not named, named[:5]
    # What may happen after the warm-up: Python reading its own code (Pillow imports the decoders for
    # other formats the first time it meets bytes it cannot identify), nothing else. (The hook sees
    # Python's file calls; a C library opening files itself would not show, but no request string
    # reaches one: the fields are numbers, the one query parameter a boolean.)
    code_roots = {Path(p).resolve() for p in sysconfig.get_paths().values()} | {Path(sys.prefix).resolve(),
                                                                                Path(sys.base_prefix).resolve(),
                                                                                (REPO / "src").resolve()}
    for event, args in events:
        assert event == "open", (event, args)
        path, mode = Path(str(args[0])).resolve(), args[1]
        assert mode in (None, "r", "rb"), (path, mode)
        assert any(path.is_relative_to(root) for root in code_roots) and path.suffix in (".py", ".pyc", ".so"), path
    assert not any(live.cwd.iterdir())
    assert {p: p.stat().st_mtime_ns for p in live.run_dir.rglob("*")} == sweep["run_files"]


def test_a_stalled_upload_and_idle_connections_do_not_block_others(live):
    host, port = live.url.removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)))
    stalled.sendall(post_head(b"Content-Length: 1000\r\n") + b'{"z": [0,')  # and never the rest
    idle = [socket.create_connection((host, int(port))) for _ in range(64)]
    try:
        with httpx.Client(base_url=live.url, timeout=10) as c:
            t = time.perf_counter()
            assert all(decodes(c) for _ in range(20))
            assert time.perf_counter() - t < 10
    finally:
        for s in [stalled, *idle]:
            s.close()
