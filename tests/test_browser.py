"""The explorer page in real headless Chromium (Debian's package) driven by Playwright.

Needs /usr/bin/chromium and the playwright Python package (``.ci/install-browser`` installs
both); skipped with the reason when either is missing. The server runs in a thread with
uvicorn on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("AEVB_CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.browser

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not found (run .ci/install-browser)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
uvicorn = pytest.importorskip("uvicorn")

from aevb.serve.app import create_app  # noqa: E402

from .vizmodels import digits_run  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(run):
    """Serve ``run`` in a thread; yields the base URL, stops the server afterwards."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(run), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            pytest.fail("the explorer did not start within 20 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url():
    yield from _serve(digits_run(2))


@pytest.fixture(scope="module")
def conditional_url():
    yield from _serve(digits_run(2, conditional=True))


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def _open(browser, url):
    context = browser.new_context(viewport={"width": 1300, "height": 1100})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.goto(url + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    yield pg
    assert not problems, problems
    assert pg.locator("#error").is_hidden(), pg.locator("#error").text_content()
    context.close()


@pytest.fixture
def page(browser, server_url):
    yield from _open(browser, server_url)


@pytest.fixture
def cpage(browser, conditional_url):
    """The explorer of a model conditioned on the 10 digit labels."""
    yield from _open(browser, conditional_url)


def decoded_pixels(pg, selector: str = "#decoded") -> np.ndarray:
    """The pixels of an <img> as the page shows them (from its blob/data URL, via the page's fetch)."""
    data = pg.evaluate("""async (sel) => {
        const r = await fetch(document.querySelector(sel).src);
        return Array.from(new Uint8Array(await r.arrayBuffer()));
    }""", selector)
    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("L"), dtype=np.int32)


def wait_for_new_src(pg, selector: str, old: str) -> None:
    pg.wait_for_function("([sel, old]) => { const i = document.querySelector(sel);"
                         " return i.src && i.src !== old && i.complete; }", arg=[selector, old], timeout=10000)


def test_slider_redecodes(page):
    before = decoded_pixels(page)
    old = page.locator("#decoded").get_attribute("src")
    slider = page.locator("#z0")
    slider.focus()
    for _ in range(150):  # 150 steps of 0.01: z[0] from 0 to 1.5
        page.keyboard.press("ArrowRight")
    page.wait_for_function("() => JSON.parse(document.querySelector('#decoded').dataset.z || '[0]')[0] > 1.49",
                           timeout=10000)
    wait_for_new_src(page, "#decoded", old)
    assert page.locator("#z0-value").text_content() == "1.50"
    after = decoded_pixels(page)
    assert np.abs(after - before).sum() > 200  # the picture changed


def test_latent_map_click_decodes_that_point(page):
    canvas = page.locator("#latent-map")
    assert canvas.is_visible()
    box = canvas.bounding_box()
    old = page.locator("#decoded").get_attribute("src")
    before = decoded_pixels(page)
    # click at 3/4 of the width, 1/4 of the height: z = (1.75, 1.75) on the [-3.5, 3.5] map
    page.mouse.click(box["x"] + 0.75 * box["width"], box["y"] + 0.25 * box["height"])
    page.wait_for_function("() => { const z = JSON.parse(document.querySelector('#decoded').dataset.z || '[0,0]');"
                           " return Math.abs(z[0] - 1.75) < 0.05 && Math.abs(z[1] - 1.75) < 0.05; }", timeout=10000)
    wait_for_new_src(page, "#decoded", old)
    assert float(page.locator("#z0-value").text_content()) == pytest.approx(1.75, abs=0.05)
    assert float(page.locator("#z1").input_value()) == pytest.approx(1.75, abs=0.05)
    assert np.abs(decoded_pixels(page) - before).sum() > 200


def test_drawing_is_encoded_and_reconstructed(page):
    canvas = page.locator("#draw")
    box = canvas.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.15
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 11):  # a vertical stroke: a "1"
        page.mouse.move(x0, y0 + k * box["height"] * 0.07)
    page.mouse.up()
    page.wait_for_function("() => Number(document.querySelector('#reconstruction').dataset.ready || 0) >= 1",
                           timeout=10000)
    inp = decoded_pixels(page, "#enc-input")
    assert inp.shape == (8, 8)
    assert inp[:, 3:5].mean() > 80 and inp[:, 0].mean() < 20  # the stroke, scaled down to 8x8
    rec = decoded_pixels(page, "#reconstruction")
    assert rec.shape == (8, 8) and rec[:, 3:5].mean() > rec[:, 0].mean() + 30  # the reconstruction follows it
    rows = page.locator("#posterior tbody tr")
    assert rows.count() == 2
    std = float(rows.nth(0).locator("td").nth(2).text_content())
    assert 0 < std < 1.5


def test_upload_is_encoded(page, tmp_path):
    arr = np.zeros((56, 56), np.uint8)
    arr[10:46, 10:46] = 255
    arr[20:36, 20:36] = 0  # a ring: a "0"
    path = tmp_path / "zero.png"
    Image.fromarray(arr).save(path)
    page.set_input_files("#upload", str(path))
    page.wait_for_function("() => Number(document.querySelector('#reconstruction').dataset.ready || 0) >= 1",
                           timeout=10000)
    inp = decoded_pixels(page, "#enc-input")
    assert inp[1:7, 1].mean() > 100 and inp[3:5, 3:5].mean() < 80  # the ring survived resizing
    assert page.locator("#use-code-btn").is_enabled()


def test_sample_and_interpolate(page):
    page.click("#set-a")
    old = page.locator("#decoded").get_attribute("src")
    page.click("#sample-btn")
    wait_for_new_src(page, "#decoded", old)
    page.click("#set-b")
    assert "not set" not in page.locator("#ab-info").text_content()
    page.fill("#steps", "6")
    page.click("#interp-btn")
    page.wait_for_function("() => document.querySelector('#interp').src.startsWith('data:image/png')", timeout=10000)
    strip = decoded_pixels(page, "#interp")
    assert strip.shape == (8, 6 * 9 - 1)


def test_label_selector_only_for_conditional_models(page, cpage):
    assert page.locator("#label-box").is_hidden()
    assert cpage.locator("#label-box").is_visible()
    assert cpage.locator("#label option").count() == 10
    assert cpage.locator("#label").input_value() == "0"


def test_changing_the_label_redecodes(cpage):
    cpage.select_option("#label", "1")
    cpage.wait_for_function("() => document.querySelector('#decoded').dataset.label === '1'", timeout=10000)
    one = decoded_pixels(cpage)
    old = cpage.locator("#decoded").get_attribute("src")
    cpage.select_option("#label", "7")
    cpage.wait_for_function("() => document.querySelector('#decoded').dataset.label === '7'", timeout=10000)
    wait_for_new_src(cpage, "#decoded", old)
    seven = decoded_pixels(cpage)
    assert np.abs(seven - one).sum() > 200  # the same z, another digit
    old = cpage.locator("#decoded").get_attribute("src")
    cpage.click("#sample-btn")  # sampling keeps the chosen label
    wait_for_new_src(cpage, "#decoded", old)
    assert cpage.locator("#decoded").get_attribute("data-label") == "7"
