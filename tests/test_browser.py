"""The explorer page in real headless Chromium (Debian's package) driven by Playwright.

Needs /usr/bin/chromium and the playwright Python package (``.ci/install-browser`` installs
both); skipped with the reason when either is missing. The server runs in a thread with
uvicorn on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import threading
import time
from pathlib import Path

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

from .vizmodels import _ROOT, colour_run, digits_run  # noqa: E402

# Where the screenshot test writes its PNGs (docs/figures to refresh the documentation's; a
# temporary folder when unset), and the run directories it shows (the test fixtures when unset):
# a 2-D model for the map, one of many dimensions for the sliders.
SCREENSHOTS = os.environ.get("AEVB_SCREENSHOTS")
SCREENSHOT_RUNS = {"map": os.environ.get("AEVB_SCREENSHOT_MAP_RUN"), "wide": os.environ.get("AEVB_SCREENSHOT_WIDE_RUN")}


def untrained_run(latent_dim: int):
    """An untrained digits-shaped (1 x 8 x 8) model: for the layout, which does not depend on what was learned."""
    import torch

    from aevb.checkpoint import save_model
    from aevb.run import load
    from aevb.config import ModelConfig, RunConfig
    from aevb.models import build_model

    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(input_shape=(1, 8, 8), latent_dim=latent_dim, hidden=(16,)))
    out = _ROOT / f"browser-untrained-{latent_dim}d"
    save_model(out, build_model(cfg.model), cfg)
    return load(out)


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
def wide_url():
    """A 20-D model (untrained: the layout is the point)."""
    yield from _serve(untrained_run(20))


@pytest.fixture(scope="module")
def colour_url():
    """An untrained RGB model of 10 x 14 images."""
    yield from _serve(colour_run())


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


@pytest.fixture
def wpage(browser, wide_url):
    yield from _open(browser, wide_url)


@pytest.fixture
def rgbpage(browser, colour_url):
    yield from _open(browser, colour_url)


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


def map_point(pg, z) -> tuple[float, float]:
    """Where on the page the latent map shows the point z (from the geometry the canvas publishes)."""
    canvas = pg.locator("#latent-map")
    box = canvas.bounding_box()
    g = {k: float(canvas.get_attribute(f"data-{k}")) for k in ("x0", "y0", "size", "range")}
    scale = box["width"] / float(canvas.get_attribute("width"))
    px = g["x0"] + (z[0] + g["range"]) / (2 * g["range"]) * g["size"]
    py = g["y0"] + (g["range"] - z[1]) / (2 * g["range"]) * g["size"]
    return box["x"] + px * scale, box["y"] + py * scale


def test_latent_map_click_decodes_that_point(page):
    assert page.locator("#latent-map").is_visible()
    old = page.locator("#decoded").get_attribute("src")
    before = decoded_pixels(page)
    page.mouse.click(*map_point(page, (1.75, 1.75)))
    page.wait_for_function("() => { const z = JSON.parse(document.querySelector('#decoded').dataset.z || '[0,0]');"
                           " return Math.abs(z[0] - 1.75) < 0.05 && Math.abs(z[1] - 1.75) < 0.05; }", timeout=10000)
    wait_for_new_src(page, "#decoded", old)
    assert float(page.locator("#z0-value").text_content()) == pytest.approx(1.75, abs=0.05)
    assert float(page.locator("#z1").input_value()) == pytest.approx(1.75, abs=0.05)
    assert np.abs(decoded_pixels(page) - before).sum() > 200


def canvas_rgb(pg, selector: str) -> np.ndarray:
    """A canvas's pixels as (H, W, 3) uint8 (through a PNG data URL: quick to move)."""
    url = pg.evaluate("(sel) => document.querySelector(sel).toDataURL('image/png')", selector)
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


MAP_COLOURS = np.array([[0x1f, 0x77, 0xb4], [0xff, 0x7f, 0x0e], [0x2c, 0xa0, 0x2c], [0xd6, 0x27, 0x28]])  # labels 0-3


def test_latent_map_has_axes_and_clips_points_to_its_square(browser, server_url):
    # 297 points inside, three far outside: the range fits 99% of them and the rest are not drawn.
    points = [[-2.9 + 5.8 * k / 296, 2.9 - 5.8 * k / 296] for k in range(297)] + [[40, 0], [0, -40], [25, 25]]
    body = json.dumps({"points": points, "labels": [k % 4 for k in range(300)]})  # saturated colours, not grey
    context = browser.new_context(viewport={"width": 1300, "height": 1100})
    pg = context.new_page()
    pg.route("**/api/map", lambda route: route.fulfill(status=200, content_type="application/json", body=body))
    pg.goto(server_url + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    canvas = pg.locator("#latent-map")
    x0, y0, size = (int(float(canvas.get_attribute(f"data-{k}"))) for k in ("x0", "y0", "size"))
    assert float(canvas.get_attribute("data-range")) == 3 and x0 >= 30 and y0 > 0  # room for the axes
    assert "3 of 300 points lie outside ±3" in pg.locator("#map-note").text_content()
    rgb = canvas_rgb(pg, "#latent-map").astype(int)
    is_point = (np.abs(rgb[:, :, None, :] - MAP_COLOURS[None, None]).sum(-1) < 30).any(-1)  # (H, W)
    inside = np.zeros_like(is_point)
    inside[y0 : y0 + size, x0 : x0 + size] = True
    assert is_point[inside].sum() > 200 and not is_point[~inside].any()  # every point pixel in the square
    margin = rgb[y0 + size + 4 : y0 + size + 20, x0 : x0 + size]  # the tick labels under the square
    assert (margin.sum(-1) < 400).sum() > 30  # dark text
    context.close()


def test_no_broken_image_placeholders_before_first_use(page):
    # Every <img> either shows a loaded picture or is hidden inside its framed placeholder.
    states = page.evaluate("""() => [...document.querySelectorAll('img')].map((img) => ({
        id: img.id, src: img.getAttribute('src'), loaded: img.complete && img.naturalWidth > 0,
        hidden: getComputedStyle(img).visibility === 'hidden',
        placeholder: getComputedStyle(img.parentElement, '::after').content }))""")
    assert {s["id"] for s in states} == {"decoded", "enc-input", "reconstruction", "interp"}
    for s in states:
        assert s["loaded"] or (s["src"] is None and s["hidden"] and s["placeholder"] not in ("none", "")), s
    assert next(s for s in states if s["id"] == "decoded")["loaded"]
    assert page.locator("#posterior").is_hidden()  # no empty table header either


def test_controls_are_styled(page):
    styles = page.evaluate("""() => { const s = (sel) => getComputedStyle(document.querySelector(sel));
        return { button: [s('#sample-btn').backgroundColor, s('#sample-btn').borderTopLeftRadius, s('#sample-btn').color],
                 secondary: [s('#zero-btn').backgroundColor, s('#zero-btn').borderTopColor],
                 range: s('#z0').accentColor, select: s('#steer-toward').borderTopLeftRadius,
                 number: s('#steps').borderTopLeftRadius, file: getComputedStyle(document.querySelector('#upload'),
                 '::file-selector-button').backgroundColor }; }""")
    assert styles["button"] == ["rgb(36, 87, 197)", "6px", "rgb(255, 255, 255)"]  # not the grey UA button
    assert styles["secondary"] == ["rgb(255, 255, 255)", "rgb(36, 87, 197)"]
    assert styles["range"] == "rgb(36, 87, 197)"
    assert styles["select"] == styles["number"] == "6px"
    assert styles["file"] == "rgb(255, 255, 255)"


def test_every_slider_is_on_the_page_for_a_20d_model(wpage):
    assert wpage.locator("#sliders input[type=range]").count() == 20
    # No scrolling box of their own: the sliders lie whole inside the panel (z[19] was cut off in one).
    assert wpage.evaluate("""() => { const box = document.getElementById('sliders');
        const panel = document.getElementById('decoder-panel').getBoundingClientRect();
        const inside = [...box.querySelectorAll('input')].every((el) => { const r = el.getBoundingClientRect();
            return r.top >= panel.top && r.bottom <= panel.bottom && r.left >= panel.left && r.right <= panel.right; });
        return box.scrollHeight <= box.clientHeight + 1 && inside; }""")
    for i in range(20):
        slider = wpage.locator(f"#z{i}")
        slider.scroll_into_view_if_needed()
        # The slider itself is what the browser finds at its centre: nothing clips or covers it.
        assert wpage.evaluate("""(id) => { const el = document.getElementById(id), r = el.getBoundingClientRect();
            return document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2) === el; }""", f"z{i}"), i
    last = wpage.locator("#z19")
    last.focus()
    for _ in range(50):
        wpage.keyboard.press("ArrowRight")
    wpage.wait_for_function("() => JSON.parse(document.querySelector('#decoded').dataset.z || '[]')[19] > 0.49",
                            timeout=10000)
    assert wpage.locator("#z19-value").text_content() == "0.50"


def test_the_hint_fits_the_data_set(page, rgbpage):
    grey = page.locator("#encode-hint").text_content()
    assert "white strokes" in grey and "8×8" in grey and "MNIST" not in grey
    assert page.locator("#pen-box").is_hidden()
    colour = rgbpage.locator("#encode-hint").text_content()
    assert "colour" in colour and "10×14" in colour and "white" not in colour and "MNIST" not in colour
    assert rgbpage.locator("#invert-text").text_content() == "invert the colours"
    # The pen's colour reaches the encoder: a red stroke is red in the input the model sees.
    rgbpage.fill("#pen", "#ff0000")
    box = rgbpage.locator("#draw").bounding_box()
    rgbpage.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    rgbpage.mouse.down()
    rgbpage.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.5, steps=8)
    rgbpage.mouse.up()
    rgbpage.wait_for_function("() => Number(document.querySelector('#reconstruction').dataset.ready || 0) >= 1",
                              timeout=10000)
    data = rgbpage.evaluate("""async () => { const r = await fetch(document.querySelector('#enc-input').src);
        return Array.from(new Uint8Array(await r.arrayBuffer())); }""")
    rgb = np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"), dtype=np.int32)
    assert rgb.shape == (10, 14, 3)
    assert rgb[5, 4:10, 0].mean() > 90 and rgb[5, 4:10, 1:].max() < 20  # red, not white
    img = rgbpage.locator("#decoded")
    assert (int(img.get_attribute("width")), int(img.get_attribute("height"))) == (196, 140)  # its aspect ratio


def test_loading_indicator(browser, server_url):
    html = browser.new_context().new_page()
    html.goto(server_url + "/app.css")  # anything but the page: then read the page's HTML as sent
    sent = html.evaluate("async () => await (await fetch('/')).text()")
    assert '<p id="busy" role="status"' in sent and 'id="busy" role="status" aria-live="polite" hidden' not in sent
    html.context.close()
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(server_url + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    assert pg.locator("#busy").is_hidden()
    # While a request is in flight the indicator shows, and it goes once the answer is in.
    shown = pg.evaluate("""() => { const s = document.getElementById('z0'); s.value = 1;
        s.dispatchEvent(new Event('input')); return !document.getElementById('busy').hidden
        && document.getElementById('busy-text').textContent; }""")
    assert shown == "working…"
    pg.wait_for_selector("#busy", state="hidden", timeout=10000)
    context.close()


def test_steering_slider_moves_z_along_the_label_direction(page):
    assert page.locator("#steer-panel").is_visible()
    page.select_option("#steer-toward", "1")
    page.select_option("#steer-away", "0")
    page.wait_for_function("() => document.querySelector('#steer-note').textContent.includes('labelled 0)')",
                           timeout=10000)
    run = digits_run(2)
    from aevb.steering import label_direction, labelled_codes

    want = label_direction(*labelled_codes(run.model, run.dataset().test), toward=[1], away=[0]).vector
    got = json.loads(page.locator("#steer-panel").get_attribute("data-direction"))
    assert got == pytest.approx(want.tolist(), abs=1e-5)
    assert page.locator("#steer-away option[value='1']").is_disabled()  # not from the label it steers to
    amount = page.locator("#steer-amount")
    amount.focus()
    for _ in range(20):  # 20 steps of 0.05: amount 1
        page.keyboard.press("ArrowRight")
    page.wait_for_function("(w) => { const z = JSON.parse(document.querySelector('#decoded').dataset.z || '[0,0]');"
                           " return Math.abs(z[0] - w[0]) < 1e-4 && Math.abs(z[1] - w[1]) < 1e-4; }",
                           arg=want.tolist(), timeout=10000)  # z = 0 + 1 * direction
    assert page.locator("#steer-amount-value").text_content() == "1.00"
    page.locator("#z0").focus()
    page.keyboard.press("ArrowRight")  # a z from elsewhere: steering starts again from there
    assert page.locator("#steer-amount-value").text_content() == "0.00"


@pytest.fixture
def shot_pages(browser, server_url, wide_url):
    """The pages the screenshots show: the fixtures' models, or the runs AEVB_SCREENSHOT_*_RUN name."""
    from aevb.run import load

    urls, servers = {"map": server_url, "wide": wide_url}, []
    for name, run_dir in SCREENSHOT_RUNS.items():
        if run_dir:
            servers.append(_serve(load(run_dir)))
            urls[name] = next(servers[-1])
    opened = [_open(browser, urls[name]) for name in ("map", "wide")]
    yield [next(o) for o in opened]
    for gen in opened + servers:
        next(gen, None)


def test_screenshots(shot_pages, tmp_path):
    """The pictures of docs/explorer.md: a 2-D model in use and a 20-D model's sliders
    (AEVB_SCREENSHOTS=docs/figures to write them there)."""
    page, wpage = shot_pages
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.85, steps=10)
    page.mouse.up()
    page.wait_for_function("() => Number(document.querySelector('#reconstruction').dataset.ready || 0) >= 1",
                           timeout=10000)
    page.click("#set-a")
    page.click("#sample-btn")
    page.wait_for_function("() => (document.querySelector('#decoded').dataset.z || '[0,0]') !== '[0,0]'",
                           timeout=10000)
    page.click("#set-b")
    page.click("#interp-btn")
    page.wait_for_function("() => document.querySelector('#interp').src.startsWith('data:image/png')", timeout=10000)
    page.wait_for_selector("#busy", state="hidden", timeout=10000)
    page.screenshot(path=str(folder / "explorer_2d.png"), full_page=True)
    wpage.screenshot(path=str(folder / "explorer_20d.png"), full_page=True)
    for name in ("explorer_2d.png", "explorer_20d.png"):
        with Image.open(folder / name) as im:
            assert im.width == 1300 and im.height >= 900


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
    assert page.locator("#sampler-box").is_hidden()  # no sampler fitted on this run: the prior alone
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
