"""The explorer's HTTP app: what each endpoint returns, and one test per rejected input."""

from __future__ import annotations

import base64
import io
import json
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from aevb.serve.app import MAX_BODY_BYTES, MAX_IMAGE_SIDE, create_app  # noqa: E402

from .imagefiles import PNG_SIGNATURE, image_bytes, png_chunk, png_file, zeros_png  # noqa: E402
from .vizmodels import digits_run  # noqa: E402


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(digits_run(2)))


@pytest.fixture(scope="module")
def client10():
    return TestClient(create_app(digits_run(10)))


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im)


_rng = np.random.default_rng(0)
_FUZZ_SEEDS = [image_bytes((_rng.random((20, 12)) * 255).astype(np.uint8)),
               image_bytes((_rng.random((20, 12, 3)) * 255).astype(np.uint8), "JPEG"),
               image_bytes((_rng.random((20, 12, 4)) * 255).astype(np.uint8))]


def error(res, status: int) -> str:
    assert res.status_code == status, res.text
    body = res.json()
    assert set(body) == {"error"} and "\n" not in body["error"]
    return body["error"]


# --- what works -------------------------------------------------------------------------


def test_page_and_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="/app.js"' in page.text and 'id="latent-map"' in page.text
    assert client.get("/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/app.css").status_code == 200


def test_info(client, client10):
    info = client.get("/api/info").json()
    assert info["latent_dim"] == 2 and info["sliders"] == 2 and info["has_map"] is True
    assert info["input_shape"] == [1, 8, 8]
    assert client10.get("/api/info").json()["has_map"] is False


def test_decode_returns_the_models_decoded_mean(client):
    run = digits_run(2)
    res = client.post("/api/decode", json={"z": [0.5, -1.0]})
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    got = png_array(res.content).astype(np.float32) / 255
    with torch.no_grad():
        want = run.model.decode(torch.tensor([[0.5, -1.0]])).mean[0, 0].numpy()
    assert got.shape == (8, 8)
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6
    other = png_array(client.post("/api/decode", json={"z": [-2.0, 2.0]}).content)
    assert np.abs(other.astype(int) - (got * 255).round().astype(int)).sum() > 100


def test_sample_is_seeded(client):
    a = client.post("/api/sample", json={"seed": 3}).json()["z"]
    assert len(a) == 2 and a == client.post("/api/sample", json={"seed": 3}).json()["z"]
    assert a != client.post("/api/sample", json={"seed": 4}).json()["z"]


def test_map_holds_test_codes_with_labels(client, client10):
    m = client.get("/api/map").json()
    assert len(m["points"]) == 300 and len(m["labels"]) == 300  # digits' test split
    assert set(m["labels"]) == set(range(10))
    assert error(client10.get("/api/map"), 404).startswith("the latent map is for 2-D latents")


def test_encode_pixels_matches_the_encoder(client):
    run = digits_run(2)
    x = run.dataset().test.x[:1]
    res = client.post("/api/encode", json={"pixels": x.flatten().tolist()})
    assert res.status_code == 200
    body = res.json()
    q = run.model.encode(x)
    assert body["mu"] == pytest.approx(q.mu[0].tolist(), abs=1e-5)
    assert body["std"] == pytest.approx(q.std[0].tolist(), abs=1e-5)
    assert png_array(base64.b64decode(body["png"])).shape == (8, 8)


@pytest.mark.parametrize("fmt,mode", [("PNG", "L"), ("JPEG", "RGB"), ("PNG", "RGBA")])
def test_encode_image_upload(client, fmt, mode):
    arr = np.zeros((64, 48, {"L": 1, "RGB": 3, "RGBA": 4}[mode]), np.uint8).squeeze()
    arr[8:56, 20:28] = 255  # a vertical bar: a "1"
    res = client.post("/api/encode-image", content=image_bytes(arr, fmt),
                      headers={"content-type": f"image/{fmt.lower()}"})
    assert res.status_code == 200, res.text
    inp = png_array(base64.b64decode(res.json()["input_png"]))
    assert inp.shape == (8, 8) and inp[:, 3:5].mean() > 100 and inp[:, 0].mean() < 30
    inv = client.post("/api/encode-image?invert=true", content=image_bytes(arr, fmt),
                      headers={"content-type": f"image/{fmt.lower()}"}).json()
    assert png_array(base64.b64decode(inv["input_png"]))[:, 0].mean() > 200


def test_interpolate_strip(client):
    res = client.post("/api/interpolate", json={"a": [-2, 0], "b": [2, 0], "steps": 5})
    body = res.json()
    assert png_array(base64.b64decode(body["png"])).shape == (8, 5 * 9 - 1)
    assert body["z"][0] == [-2, 0] and body["z"][-1] == [2, 0] and body["z"][2] == [0, 0]


# --- rejections: one test each -----------------------------------------------------------


def test_rejects_wrong_vector_length(client):
    assert "must have 2 values" in error(client.post("/api/decode", json={"z": [0.0, 0.0, 0.0]}), 400)


def test_rejects_non_finite_values(client):
    body = '{"z": [NaN, 0.0]}'  # Python's JSON reader accepts NaN; the app must not
    res = client.post("/api/decode", content=body, headers={"content-type": "application/json"})
    assert "not a finite number" in error(res, 400)
    res = client.post("/api/decode", content='{"z": [0.0, Infinity]}', headers={"content-type": "application/json"})
    assert "not a finite number" in error(res, 400)


def test_rejects_huge_latent_values(client):
    assert "outside" in error(client.post("/api/decode", json={"z": [1e6, 0.0]}), 400)


def test_rejects_wrong_types(client):
    assert error(client.post("/api/decode", json={"z": ["a", 1]}), 422).startswith("z.0:")
    assert error(client.post("/api/decode", json={"z": 3}), 422).startswith("z:")


@pytest.mark.parametrize("path,body,field", [
    ("/api/decode", {"z": ["1.5", 0]}, "z.0"),      # a number in a string
    ("/api/decode", {"z": [True, False]}, "z.0"),   # booleans are not numbers
    ("/api/encode", {"pixels": [True] * 64}, "pixels.0"),
    ("/api/sample", {"seed": "3"}, "seed"),
    ("/api/sample", {"seed": 3.0}, "seed"),         # an integer field takes no floats, even whole ones
    ("/api/sample", {"seed": True}, "seed"),
    ("/api/interpolate", {"a": [0, 0], "b": [1, 1], "steps": "5"}, "steps"),
])
def test_rejects_values_that_are_only_coercible_to_the_type(client, path, body, field):
    assert error(client.post(path, json=body), 422).startswith(f"{field}:")


@pytest.mark.parametrize("seed", [-1, 2**63, 10**30])
def test_rejects_seed_outside_64_bits(client, seed):
    assert "seed must be an integer in [0, 2**63 - 1]" in error(client.post("/api/sample", json={"seed": seed}), 400)
    assert len(client.post("/api/sample", json={"seed": 2**63 - 1}).json()["z"]) == 2


def test_long_integers_are_shortened_in_messages(client):
    res = client.post("/api/sample", content='{"seed": 1' + "0" * 4000 + "}",
                      headers={"content-type": "application/json"})
    assert error(res, 400).endswith("got 100000000000... (4001 digits)")


def test_rejects_unknown_fields(client):
    assert "extra" in error(client.post("/api/decode", json={"z": [0, 0], "path": "/etc/passwd"}), 422).lower()


def test_rejects_malformed_json(client):
    res = client.post("/api/decode", content='{"z": [0, 0]', headers={"content-type": "application/json"})
    assert error(res, 422) == "the body is not valid JSON: Expecting ',' delimiter at character 12"


@pytest.mark.parametrize("body,message", [("", "the body is empty; send a JSON object"),
                                          ("[0, 0]", "the body must be a JSON object; got an array"),
                                          ("null", "the body must be a JSON object; got null")])
def test_rejects_bodies_that_are_not_objects(client, body, message):
    assert error(client.post("/api/decode", content=body, headers={"content-type": "application/json"}), 422) == message


def test_rejects_json_nested_too_deep_to_parse(client):
    res = client.post("/api/decode", content="[" * 100_000, headers={"content-type": "application/json"})
    assert error(res, 400) == "There was an error parsing the body"


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "image/png"])
def test_json_endpoints_need_a_json_content_type(client, ctype):
    headers = {"content-type": ctype} if ctype else {}
    res = client.post("/api/decode", content='{"z": [0, 0]}', headers=headers)
    assert error(res, 415) == f"Content-Type must be application/json; got {ctype or 'none'}"
    ok = client.post("/api/decode", content='{"z": [0, 0]}',
                     headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_unknown_routes_and_wrong_methods_answer_in_the_same_format(client):
    assert error(client.get("/api/nope"), 404) == "Not Found"
    assert error(client.post("/api/nope", json={}), 404) == "Not Found"
    res = client.get("/api/decode")
    assert error(res, 405) == "Method Not Allowed" and res.headers["allow"] == "POST"
    assert error(client.delete("/"), 405) == "Method Not Allowed"


def test_rejects_bad_steps(client):
    assert "steps must be between 2 and 32" in error(
        client.post("/api/interpolate", json={"a": [0, 0], "b": [1, 1], "steps": 1000}), 400)


def test_rejects_interpolation_endpoint_of_wrong_length(client):
    assert error(client.post("/api/interpolate", json={"a": [0, 0], "b": [1]}), 400).startswith("b must have 2 values")


def test_rejects_wrong_pixel_count(client):
    assert "must have 64 values" in error(client.post("/api/encode", json={"pixels": [0.5] * 63}), 400)


def test_rejects_pixels_out_of_range(client):
    assert "[0, 1]" in error(client.post("/api/encode", json={"pixels": [2.0] * 64}), 400)


def test_rejects_oversized_body(client):
    big = b"\x89PNG" + b"\0" * (MAX_BODY_BYTES + 1)
    assert "limit" in error(client.post("/api/encode-image", content=big, headers={"content-type": "image/png"}), 413)
    assert "limit" in error(client.post("/api/encode", content=json.dumps({"pixels": [0.0] * 500_000}),
                                        headers={"content-type": "application/json"}), 413)


def test_rejects_missing_content_length(client):
    def chunks():
        yield b'{"z": [0, 0]}'

    res = client.post("/api/decode", content=chunks(), headers={"content-type": "application/json"})
    assert "Content-Length" in error(res, 411)


def test_rejects_unsupported_content_type(client):
    res = client.post("/api/encode-image", content=b"GIF89a....", headers={"content-type": "image/gif"})
    assert "image/png or image/jpeg" in error(res, 415)


def test_rejects_image_of_other_format_behind_png_header(client):
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    res = client.post("/api/encode-image", content=gif.getvalue(), headers={"content-type": "image/png"})
    assert "GIF is not accepted" in error(res, 415)


def test_rejects_bytes_that_are_not_an_image(client):
    res = client.post("/api/encode-image", content=PNG_SIGNATURE + b"not really", headers={"content-type": "image/png"})
    assert "not a readable PNG or JPEG" in error(res, 415)


def test_rejects_png_with_a_broken_chunk(client):
    # Pillow reports a bad chunk type met while decoding as SyntaxError("broken PNG file"), not OSError.
    raw = zlib.compress(b"".join(b"\0" + bytes(range(16)) for _ in range(16)))  # 16 rows: filter byte + pixels
    data = png_file(16, 16, png_chunk(b"IDAT", raw[:10]) + png_chunk(b"\x00\x01\x02\x03", b"xx")
                    + png_chunk(b"IDAT", raw[10:]))
    res = client.post("/api/encode-image", content=data, headers={"content-type": "image/png"})
    assert error(res, 415) == "not a readable PNG or JPEG image (SyntaxError)"


def test_rejects_decompression_bomb_before_decoding(client):
    # 20000 x 20000 1-bit pixels in under 1 kB: Pillow's own limit (about 179 million pixels) stops it first.
    data = zeros_png(20000, 20000)
    assert len(data) < 100_000
    res = client.post("/api/encode-image", content=data, headers={"content-type": "image/png"})
    assert error(res, 413).startswith("image too large to decode: Image size (400000000 pixels) exceeds limit")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_corrupted_uploads_are_a_400_level_answer_or_an_image(client, data):
    seed = data.draw(st.sampled_from(_FUZZ_SEEDS))
    mutated = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        mutated[at] = data.draw(st.integers(0, 255))
    mutated = mutated[: data.draw(st.integers(1, len(mutated)))]
    res = client.post("/api/encode-image", content=bytes(mutated), headers={"content-type": "image/png"})
    assert res.status_code in (200, 400, 413, 415), res.text


def test_rejects_empty_upload(client):
    assert "empty" in error(client.post("/api/encode-image", content=b"", headers={"content-type": "image/png"}), 400)


def test_rejects_image_with_too_many_pixels(client):
    # A 1-bit PNG this large is only a few kilobytes: the dimension limit, not the byte limit, stops it.
    data = image_bytes(np.zeros((8, MAX_IMAGE_SIDE + 1), bool))
    assert len(data) < MAX_BODY_BYTES
    res = client.post("/api/encode-image", content=data, headers={"content-type": "image/png"})
    assert "pixels a side" in error(res, 413)


def test_serves_nothing_else_from_disk(client):
    for path in ("/../pyproject.toml", "/static/../app.py", "/app.py", "/%2e%2e/%2e%2e/etc/passwd", "/docs",
                 "/openapi.json", "/index.html"):
        assert client.get(path).status_code == 404, path


def test_unknown_query_parameters_are_ignored(client):
    assert client.get("/api/info?run=../../etc/passwd&data_dir=/etc").json() == client.get("/api/info").json()
    assert client.get("/api/map?data_dir=/etc").json() == client.get("/api/map").json()


def test_serve_command_binds_localhost_by_default():
    from aevb.cli.serve import serve

    host = next(p for p in serve.params if p.name == "host")
    assert host.default == "127.0.0.1"


def test_autoencoder_runs_are_served_too():
    run = digits_run(2, kind="ae")
    c = TestClient(create_app(run))
    x = run.dataset().test.x[:1]
    body = c.post("/api/encode", json={"pixels": x.flatten().tolist()}).json()
    assert body["std"] == [0.0, 0.0]  # an AE's code is a point
    assert body["mu"] == pytest.approx(run.model.embed(x)[0].tolist(), abs=1e-5)
    assert c.post("/api/decode", json={"z": body["mu"]}).status_code == 200


def test_samples_come_from_a_fitted_sampler_when_asked(tmp_path, client):
    """An AE with a GMM fitted on its codes (``aevb fit-prior``): the page lists it, /api/sample draws from it."""
    from aevb.checkpoint import save_model
    from aevb.run import load
    from aevb.config import ModelConfig, RunConfig
    from aevb.models import build_model
    from aevb.samplers import fit_prior

    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(family="ae", input_shape=(1, 8, 8), latent_dim=3, hidden=(16,)))
    save_model(tmp_path / "ae", build_model(cfg.model), cfg)
    gmm, _ = fit_prior(load(tmp_path / "ae"), "gmm", components=2)
    c = TestClient(create_app(load(tmp_path / "ae")))
    info = c.get("/api/info").json()
    assert info["samplers"] == ["gmm"] and info["has_prior"] is False
    assert client.get("/api/info").json()["samplers"] == [] and client.get("/api/info").json()["has_prior"] is True
    z = c.post("/api/sample", json={"seed": 5, "sampler": "gmm"}).json()["z"]
    assert z == gmm.sample(1, torch.Generator().manual_seed(5))[0].tolist()
    assert len(c.post("/api/sample", json={"seed": 5, "sampler": "prior"}).json()["z"]) == 3  # N(0, I)
    assert "one fitted on this run (gmm); got 'maf'" in error(c.post("/api/sample", json={"sampler": "maf"}), 404)
    assert "(none)" in error(client.post("/api/sample", json={"sampler": "gmm"}), 404)
    assert 'id="sampler"' in c.get("/").text


# --- conditional models: a label beside z ---------------------------------------------------


@pytest.fixture(scope="module")
def cclient():
    return TestClient(create_app(digits_run(2, conditional=True)))


def test_info_says_how_many_labels(client, cclient):
    assert cclient.get("/api/info").json()["num_classes"] == 10
    assert client.get("/api/info").json()["num_classes"] == 0


def test_conditional_decode_uses_the_label(cclient):
    run = digits_run(2, conditional=True)
    images = []
    for label in (1, 7):
        res = cclient.post("/api/decode", json={"z": [0.3, -0.2], "label": label})
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        got = png_array(res.content).astype(np.float32) / 255
        with torch.no_grad():
            want = run.model.decode(torch.tensor([[0.3, -0.2]]), torch.tensor([label])).mean[0, 0].numpy()
        assert np.abs(got - want).max() <= 1 / 255 + 1e-6
        images.append(got)
    assert np.abs(images[0] - images[1]).sum() * 255 > 200  # a 1 is not a 7


def test_conditional_sample_keeps_or_draws_the_label(cclient, client):
    a = cclient.post("/api/sample", json={"seed": 3, "label": 4}).json()
    assert a["label"] == 4 and len(a["z"]) == 2
    b = cclient.post("/api/sample", json={"seed": 3}).json()
    assert 0 <= b["label"] < 10 and b == cclient.post("/api/sample", json={"seed": 3}).json()
    assert "label" not in client.post("/api/sample", json={"seed": 3}).json()


def test_conditional_encode_and_interpolate_take_the_label(cclient):
    run = digits_run(2, conditional=True)
    test = run.dataset().test
    x, y = test.x[:1], test.y[:1]
    body = cclient.post("/api/encode", json={"pixels": x.flatten().tolist(), "label": int(y)}).json()
    assert body["mu"] == pytest.approx(run.model.encode(x, y).mu[0].tolist(), abs=1e-5)
    arr = (x[0, 0].numpy() * 255).astype(np.uint8)
    res = cclient.post(f"/api/encode-image?label={int(y)}", content=image_bytes(arr),
                       headers={"content-type": "image/png"})
    assert res.status_code == 200, res.text
    res = cclient.post("/api/interpolate", json={"a": [-1, 0], "b": [1, 0], "steps": 3, "label": 2})
    assert png_array(base64.b64decode(res.json()["png"])).shape == (8, 3 * 9 - 1)
    assert len(cclient.get("/api/map").json()["points"]) == 300


@pytest.mark.parametrize("label", [10, -1, 1000])
def test_rejects_label_out_of_range(cclient, label):
    assert "label must be between 0 and 9" in error(cclient.post("/api/decode", json={"z": [0, 0], "label": label}), 400)


@pytest.mark.parametrize("label", ["3", 3.5, True, [3]])
def test_rejects_label_of_wrong_type(cclient, label):
    assert error(cclient.post("/api/decode", json={"z": [0, 0], "label": label}), 422).startswith("label:")


def test_rejects_missing_label_for_conditional_and_any_label_for_unconditional(cclient, client):
    assert "send a label between 0 and 9" in error(cclient.post("/api/decode", json={"z": [0, 0]}), 400)
    assert "send a label" in error(cclient.post("/api/encode", json={"pixels": [0.5] * 64}), 400)
    assert "send a label" in error(cclient.post("/api/interpolate", json={"a": [0, 0], "b": [1, 1]}), 400)
    assert "between 0 and 9" in error(cclient.post("/api/sample", json={"label": 12}), 400)
    res = cclient.post("/api/encode-image?label=x", content=b"\x89PNG", headers={"content-type": "image/png"})
    assert error(res, 422).startswith("query.label:")
    assert "not conditional" in error(client.post("/api/decode", json={"z": [0, 0], "label": 1}), 400)
    assert "not conditional" in error(client.post("/api/sample", json={"label": 1}), 400)


# --- steering toward a label -------------------------------------------------------------------


def test_attributes_list_the_test_sets_labels(client, cclient):
    body = client.get("/api/attributes").json()
    test = digits_run(2).dataset().test
    assert body["labels"] == list(range(10)) and body["images"] == len(test) == sum(body["counts"])
    assert body["counts"][1] == int((test.y == 1).sum())
    assert client.get("/api/info").json()["can_steer"] is True
    conditional = cclient.get("/api/attributes").json()
    assert conditional["labels"] == [] and "conditional" in conditional["note"]
    assert cclient.get("/api/info").json()["can_steer"] is False


def test_direction_is_the_mean_code_difference(client):
    from aevb.steering import label_direction, labelled_codes

    run = digits_run(2)
    codes, labels = labelled_codes(run.model, run.dataset().test)
    for query, toward, away in (("toward=1&away=0", [1], [0]), ("toward=3,5", [3, 5], None)):
        body = client.get(f"/api/direction?{query}").json()
        want = label_direction(codes, labels, toward, away)
        assert body["direction"] == pytest.approx(want.vector.tolist(), abs=1e-5)
        assert (body["toward"], body["away"], body["n_toward"], body["n_away"]) == (toward, away, want.n_toward,
                                                                                    want.n_away)


def test_direction_rejections(client, cclient):
    assert "no image has label 12" in error(client.get("/api/direction?toward=12"), 400)
    assert "share label" in error(client.get("/api/direction?toward=1&away=1"), 400)
    for bad in ("x", "", "1,,2", "-1", "9" * 30):
        assert "toward must be one or more labels" in error(client.get(f"/api/direction?toward={bad}"), 400)
    assert "away must be" in error(client.get("/api/direction?toward=1&away=a"), 400)
    assert error(client.get("/api/direction"), 422).startswith("query.toward:")
    assert "conditional" in error(cclient.get("/api/direction?toward=1"), 404)


def test_attributes_of_a_model_whose_data_set_does_not_fit():
    from .vizmodels import colour_run

    body = TestClient(create_app(colour_run())).get("/api/attributes").json()  # a 3x10x14 model, digits data
    assert body["labels"] == [] and "the model takes (3, 10, 14)" in body["note"]
