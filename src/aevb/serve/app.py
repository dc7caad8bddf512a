"""The latent explorer's HTTP app: decode, sample, encode (drawing or image), interpolate.

    aevb serve runs/mnist2d            # http://127.0.0.1:8000/

Endpoints (JSON in, JSON or PNG out; every rejection is a 4xx with ``{"error": "..."}``):

    GET  /                      the page;  GET /app.js, /app.css  its assets (nothing else is read from disk)
    GET  /api/info              latent size, image shape, which controls the page shows
    GET  /api/map               up to MAP_POINTS test-set posterior means with labels (2-D latents only)
    POST /api/decode            {"z": [...]}                     -> image/png, the decoded mean
    POST /api/sample            {"seed": 0, "sampler": "gmm"}    -> {"z": [...]} drawn from the prior, or from a
                                sampler fitted on the codes (``aevb fit-prior``; ``info.samplers`` lists them)
    POST /api/encode            {"pixels": [...C*H*W in [0,1]]}  -> {"mu", "std", "png", "input_png"}
    POST /api/encode-image      raw PNG/JPEG bytes (+ ?invert=1) -> as /api/encode
    POST /api/interpolate       {"a": [...], "b": [...], "steps": 8} -> {"png": strip, "z": [...]}
    GET  /api/attributes        the labels of the test set's codes (for steering), with their counts
    GET  /api/direction?toward=8[&away=3]  -> {"direction": [...], "toward", "away", "n_toward", "n_away", "norm"}:
                                the mean code of the toward label(s) minus that of the away label(s) or of
                                all the others (``aevb.steering``); the page adds amount * direction to z

A conditional model (``info.num_classes`` K > 0) needs a label in every request that
decodes or encodes: ``"label": 0..K-1`` in the JSON bodies, ``?label=`` for encode-image.
``/api/sample`` takes an optional label and returns ``{"z", "label"}``, drawing the label
uniformly (with the same seed) when none is sent. An unconditional model refuses a label.

Images come back as PNG at the model's own resolution; the page scales them up.
"""

from __future__ import annotations

import base64
import io
import math
from importlib import resources

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..conditional import LabelError, check_label
from ..images import fit_image, tile, to_pil

MAX_BODY_BYTES = 2 * 1024 * 1024  # uploads and JSON bodies
MAX_IMAGE_SIDE = 4096  # decoded width or height of an uploaded image
MAX_ABS_Z = 1000.0  # latent values beyond this are certainly a mistake
MAX_TEMPERATURE = 10.0  # a prior's temperature beyond this draws noise
MAX_STEPS = 32
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer
MAX_SLIDERS = 32
MAP_POINTS = 2000
ATTRIBUTE_POINTS = 5000  # test-set codes the steering directions are the mean differences of
IMAGE_FORMATS = {"PNG", "JPEG"}
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
JSON_ROUTES = {"/api/decode", "/api/sample", "/api/encode", "/api/interpolate"}  # POST, JSON body


class InputError(ValueError):
    """A request the explorer rejects: answered with ``status`` and a one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class _Body(BaseModel):
    # Strict: "1.5", true and 3.0 are not numbers (lax mode would take them for 1.5, 1 and 3).
    model_config = ConfigDict(extra="forbid")


class DecodeBody(_Body):
    z: list[StrictFloat]
    label: StrictInt | None = None
    # A model with several latent layers: the layers below the top drawn given it at this temperature,
    # with this seed's noise (the same seed: the same noise while the sliders move).
    temperature: StrictFloat | None = None
    seed: StrictInt | None = None


class SampleBody(_Body):
    seed: StrictInt | None = None
    label: StrictInt | None = None
    sampler: str | None = None  # "prior" (or None), or the name of a fitted sampler
    temperature: StrictFloat | None = None  # for a model whose prior takes one (every layer at it)


class EncodeBody(_Body):
    pixels: list[StrictFloat]
    label: StrictInt | None = None


class InterpolateBody(_Body):
    a: list[StrictFloat]
    b: list[StrictFloat]
    steps: StrictInt = 8
    label: StrictInt | None = None


def _static(name: str) -> bytes:
    return resources.files("aevb.serve").joinpath("static", name).read_bytes()


def to_png(images: torch.Tensor) -> bytes:
    """(C, H, W) or a row (N, C, H, W) in [0, 1] -> PNG bytes (a row is tiled left to right, 1 px apart)."""
    if images.dim() == 4:
        images = tile(images, ncol=len(images))
    buf = io.BytesIO()
    to_pil(images).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _show_int(n: int) -> str:
    """An integer for an error message, shortened when a client sent thousands of digits."""
    text = str(n)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text.lstrip('-'))} digits)"


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


class Explorer:
    """The model-side work of the app, kept apart from HTTP so it can be tested and timed directly."""

    def __init__(self, run, data_dir: str | None = None, map_points: int = MAP_POINTS):
        self.run = run
        self.model = run.model.eval()
        self.device = self.model.device
        self.latent_dim = self.model.latent_dim
        self.num_classes = run.config.model.num_classes
        self.shape = tuple(run.config.model.input_shape)  # (C, H, W)
        self.map_points = map_points
        self.data_dir = data_dir
        self._map: dict | None = None
        self._labelled: tuple | str | None = None  # (codes, labels), or why there are none
        self.has_prior = self.model.capabilities.has_prior
        self.samplers = run.samplers  # fitted with `aevb fit-prior`, listed once when the explorer starts
        self._samplers: dict = {}  # name -> the loaded sampler

    # --- validation ---------------------------------------------------------------
    def vector(self, values: list[float], name: str = "z") -> torch.Tensor:
        if len(values) != self.latent_dim:
            raise InputError(f"{name} must have {self.latent_dim} values (the latent dimension); got {len(values)}")
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise InputError(f"{name}[{i}] is not a finite number")
            if abs(v) > MAX_ABS_Z:
                raise InputError(f"{name}[{i}] = {v} is outside [-{MAX_ABS_Z:g}, {MAX_ABS_Z:g}]")
        return torch.tensor(values, dtype=torch.float32, device=self.device)

    def label(self, value: int | None, required: bool = True) -> torch.Tensor | None:
        """A conditional model's label as a (1,) tensor; None for an unconditional model (or when not
        ``required`` and not given)."""
        try:
            label = check_label(value, self.num_classes, "label", required=required)
        except LabelError as e:
            raise InputError(str(e)) from None
        return None if label is None else torch.tensor([label], dtype=torch.long, device=self.device)

    def pixels(self, values: list[float]) -> torch.Tensor:
        c, h, w = self.shape
        if len(values) != c * h * w:
            raise InputError(f"pixels must have {c * h * w} values (C*H*W = {c}*{h}*{w}); got {len(values)}")
        x = torch.tensor(values, dtype=torch.float32)
        if not torch.isfinite(x).all():
            raise InputError("pixels must be finite numbers")
        if x.min() < 0 or x.max() > 1:
            raise InputError("pixels must lie in [0, 1]")
        return x.view(1, c, h, w).to(self.device)

    def image(self, data: bytes, invert: bool = False) -> torch.Tensor:
        """An uploaded PNG/JPEG, checked, converted to the model's channels and resized to (H, W)."""
        if not data:
            raise InputError("the request body is empty; send the PNG or JPEG file's bytes")
        if len(data) > MAX_BODY_BYTES:
            raise InputError(f"image is {len(data)} bytes; the limit is {MAX_BODY_BYTES}", 413)
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.format not in IMAGE_FORMATS:
                    raise InputError(f"image type {img.format} is not accepted; send PNG or JPEG", 415)
                if img.width > MAX_IMAGE_SIDE or img.height > MAX_IMAGE_SIDE:
                    raise InputError(f"image is {img.width}x{img.height}; the limit is {MAX_IMAGE_SIDE} pixels a side", 413)
                img.load()
                x = fit_image(img, self.shape)
        except InputError:
            raise
        except Image.DecompressionBombError as e:  # Pillow's own pixel limit, met before ours for huge images
            raise InputError(f"image too large to decode: {e}", 413) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # SyntaxError: "broken PNG file"
            raise InputError(f"not a readable PNG or JPEG image ({type(e).__name__})", 415) from None
        if invert:
            x = 1 - x
        return x.unsqueeze(0).to(self.device)

    # --- model work ---------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded means (N, C, H, W) of z (N, Z) or (Z,), given a conditional model's label y (1,)."""
        z = z.view(-1, self.latent_dim)
        return self.model.decode(z, None if y is None else y.expand(len(z))).mean

    def decode_png(self, z: torch.Tensor, y: torch.Tensor | None = None, temperature: float | None = None,
                   seed: int | None = None) -> bytes:
        if temperature is not None:
            z = self.below_top(z, temperature, seed)
        return to_png(self.decode(z, y)[0])

    def sampler(self, name: str | None):
        """The fitted sampler ``name`` (loaded once), or None for the model's prior ("prior" or None)."""
        if name is None or name == "prior":
            return None
        if name not in self.samplers:
            fitted = ", ".join(self.samplers) or "none"
            raise InputError(f"sampler must be prior or one fitted on this run ({fitted}); got {name[:40]!r}", 404)
        if name not in self._samplers:
            from ..samplers import load_fitted

            self._samplers[name] = load_fitted(self.run, name)
        return self._samplers[name]

    @property
    def tempered(self) -> bool:
        """Whether the model draws at a temperature, its lower layers given the top one (``resample_below``)."""
        return callable(getattr(self.model, "resample_below", None))

    def temperature(self, value: float) -> float:
        if not self.tempered:
            raise InputError("this model has no temperature (one latent layer, drawn from its prior as it is); "
                             "leave temperature out")
        if not (math.isfinite(value) and 0 <= value <= MAX_TEMPERATURE):
            raise InputError(f"temperature must be between 0 and {MAX_TEMPERATURE:g}; got {value}")
        return value

    @torch.inference_mode()
    def below_top(self, z: torch.Tensor, temperature: float, seed: int | None) -> torch.Tensor:
        """z with its top layer kept and the layers below drawn given it at ``temperature`` (seeded)."""
        t = self.temperature(temperature)
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise InputError(f"seed must be an integer in [0, 2**63 - 1]; got {_show_int(seed)}")
        g = torch.Generator(device=self.device).manual_seed(seed if seed is not None else 0)
        return self.model.resample_below(z.view(1, -1), keep=1, generator=g, temperature=t)[0]

    def sample(self, seed: int | None, label: int | None = None, sampler: str | None = None,
               temperature: float | None = None) -> dict:
        """z ~ p(z), the model's prior (at ``temperature`` for a model that has one), or a draw of a fitted
        ``sampler`` (the code the sliders set); a conditional model's label is kept, or drawn uniformly when
        not given."""
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise InputError(f"seed must be an integer in [0, 2**63 - 1]; got {_show_int(seed)}")
        given = self.label(label, required=False)
        fitted = self.sampler(sampler)
        g = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
        if fitted is None:
            tempered = {} if temperature is None else {"temperature": self.temperature(temperature)}
            z = self.model.sample_codes(1, generator=g, device="cpu", **tempered)
        else:
            z = fitted.sample(1, g)
        out: dict = {"z": z.reshape(1, -1)[0].tolist()}
        if self.num_classes:
            out["label"] = label if given is not None else int(torch.randint(self.num_classes, (), generator=g))
        return out

    @torch.inference_mode()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        if self.model.capabilities.has_posterior:
            q = self.model.encode(x, y)
            mu = q.mean[0]
            std = q.std[0] if hasattr(q, "std") else torch.zeros_like(mu)  # a flow posterior has no closed-form std
        else:
            mu = self.model.embed(x, y)[0]
            std = torch.zeros_like(mu)
        return {"mu": mu.tolist(), "std": std.tolist(), "png": _b64(self.decode_png(mu, y)),
                "input_png": _b64(to_png(x[0]))}

    def interpolate(self, a: torch.Tensor, b: torch.Tensor, steps: int, y: torch.Tensor | None = None) -> dict:
        if not 2 <= steps <= MAX_STEPS:
            raise InputError(f"steps must be between 2 and {MAX_STEPS}; got {_show_int(steps)}")
        t = torch.linspace(0, 1, steps, device=self.device).view(-1, 1)
        z = (1 - t) * a + t * b
        return {"png": _b64(to_png(self.decode(z, y))), "z": z.tolist(), "steps": steps}

    def latent_map(self) -> dict:
        if self.latent_dim != 2:
            raise InputError(f"the latent map is for 2-D latents; this model has {self.latent_dim} dimensions", 404)
        if self._map is None:
            from ..viz import latent_codes

            try:
                split = self.run.dataset(self.data_dir).test
            except (ValueError, OSError) as e:
                self._map = {"points": [], "labels": None, "note": f"test set unavailable: {e}"}
                return self._map
            y = split.y[: self.map_points] if split.y is not None else None
            if self.num_classes and y is None:
                self._map = {"points": [], "labels": None, "note": "the test set has no labels to encode with"}
                return self._map
            codes = latent_codes(self.model, split.x[: self.map_points], y=y if self.num_classes else None)
            labels = y.tolist() if y is not None else None
            self._map = {"points": [[round(a, 4), round(b, 4)] for a, b in codes.tolist()], "labels": labels}
        return self._map

    def labelled_codes(self) -> tuple[torch.Tensor, torch.Tensor] | str:
        """The test set's first ATTRIBUTE_POINTS codes and labels (computed once), or why there are none."""
        if self._labelled is None:
            from ..steering import SteeringError, labelled_codes

            try:
                self._labelled = labelled_codes(self.model, self.run.dataset(self.data_dir).test, n=ATTRIBUTE_POINTS)
            except SteeringError as e:
                self._labelled = str(e)
            except (ValueError, OSError) as e:
                self._labelled = f"test set unavailable: {e}"
        return self._labelled

    def attributes(self) -> dict:
        """The labels a code can be steered toward (those of the test set) and how many codes each has;
        no labels, and a note saying why, when steering does not apply."""
        labelled = self.labelled_codes()
        if isinstance(labelled, str):
            return {"labels": [], "counts": [], "note": labelled}
        labels, counts = torch.unique(labelled[1], return_counts=True)
        return {"labels": labels.tolist(), "counts": counts.tolist(), "images": len(labelled[1]), "split": "test"}

    def direction(self, toward: list[int], away: list[int] | None) -> dict:
        from ..steering import SteeringError, label_direction

        labelled = self.labelled_codes()
        if isinstance(labelled, str):
            raise InputError(f"no directions: {labelled}", 404)
        try:
            return label_direction(*labelled, toward=toward, away=away).to_dict()
        except SteeringError as e:
            raise InputError(str(e)) from None

    @property
    def top_layer(self) -> int | None:
        """The top latent layer's dimensions, for a model with several (the sliders set it); else None."""
        sizes = getattr(self.model, "latent_layer_sizes", None)
        return int(sizes[0]) if sizes and len(sizes) > 1 else None

    def info(self) -> dict:
        cfg = self.run.config
        return {"run": self.run.dir.name, "dataset": cfg.data.dataset, "family": cfg.model.family,
                "latent_dim": self.latent_dim, "sliders": min(self.top_layer or self.latent_dim, MAX_SLIDERS),
                "temperature": self.tempered, "top_layer": self.top_layer,
                "input_shape": list(self.shape), "has_map": self.latent_dim == 2, "num_classes": self.num_classes,
                "can_steer": not self.num_classes, "max_steps": MAX_STEPS, "max_upload_bytes": MAX_BODY_BYTES,
                "has_prior": self.has_prior, "samplers": self.samplers}


def label_list(value: str | None, name: str) -> list[int] | None:
    """A query parameter such as "8" or "3,5" as a list of labels (None when not given)."""
    if value is None:
        return None
    try:
        labels = [int(v) for v in value.split(",")]
    except ValueError:
        labels = []
    if not labels or len(labels) > 1000 or min(labels) < 0 or max(labels) >= 2**31:
        raise InputError(f"{name} must be one or more labels such as 8 or 3,5; got {value[:40]!r}")
    return labels


def _json_type(value) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array",
             dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def validation_message(errors: list[dict]) -> str:
    """The first of pydantic's errors as one line naming the field, e.g. ``z.0: Input should be a valid number``."""
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "JSON decode error")
        at = f" at character {loc[1]}" if len(loc) > 1 else ""
        return f"the body is not valid JSON: {reason}{at}"
    if loc == ("body",):
        if first.get("type") == "missing":
            return "the body is empty; send a JSON object"
        return f"the body must be a JSON object; got {_json_type(first.get('input'))}"
    where = ".".join(str(p) for p in loc if p != "body")
    message = first.get("msg", "invalid request")
    return f"{where}: {message}" if where else message


def create_app(run, data_dir: str | None = None) -> FastAPI:
    """The explorer for a loaded run (``aevb.load``)."""
    ex = Explorer(run, data_dir=data_dir)
    app = FastAPI(title="aevb latent explorer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = ex
    assets = {route: (_static(name), media) for route, (name, media) in STATIC.items()}

    @app.middleware("http")
    async def check_post(request: Request, call_next):
        # Before the body is read: its declared size, and JSON where the route expects JSON.
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"error": "a Content-Length header is required"}, status_code=411)
            if not length.isdigit() or int(length) > MAX_BODY_BYTES:
                return JSONResponse({"error": f"request body over the {MAX_BODY_BYTES}-byte limit"}, status_code=413)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if request.url.path in JSON_ROUTES and ctype != "application/json":
                return JSONResponse({"error": f"Content-Type must be application/json; got {ctype or 'none'}"},
                                    status_code=415)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(InputError)
    async def input_error(request: Request, e: InputError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        return JSONResponse({"error": validation_message(e.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        # Unknown routes (404), wrong methods (405) and bodies FastAPI cannot parse (400), as {"error": ...}.
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code, headers=e.headers)

    def page(route: str):
        body, media = assets[route]

        async def handler() -> Response:
            return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})

        return handler

    for route in assets:
        app.add_api_route(route, page(route), methods=["GET"], include_in_schema=False)

    @app.get("/api/info")
    def info() -> dict:
        return ex.info()

    @app.get("/api/map")
    def latent_map() -> dict:
        return ex.latent_map()

    @app.get("/api/attributes")
    def attributes() -> dict:
        return ex.attributes()

    @app.get("/api/direction")
    def direction(toward: str, away: str | None = None) -> dict:
        return ex.direction(label_list(toward, "toward"), label_list(away, "away"))

    @app.post("/api/decode")
    def decode(body: DecodeBody) -> Response:
        return Response(ex.decode_png(ex.vector(body.z), ex.label(body.label), body.temperature, body.seed),
                        media_type="image/png")

    @app.post("/api/sample")
    def sample(body: SampleBody) -> dict:
        return ex.sample(body.seed, body.label, body.sampler, body.temperature)

    @app.post("/api/encode")
    def encode(body: EncodeBody) -> dict:
        return ex.encode(ex.pixels(body.pixels), ex.label(body.label))

    @app.post("/api/encode-image")
    async def encode_image(request: Request, invert: bool = False, label: int | None = None) -> dict:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("image/png", "image/jpeg"):
            raise InputError(f"Content-Type must be image/png or image/jpeg; got {ctype or 'none'}", 415)
        y = ex.label(label)
        data = await request.body()
        return await run_in_threadpool(lambda: ex.encode(ex.image(data, invert=invert), y))

    @app.post("/api/interpolate")
    def interpolate(body: InterpolateBody) -> dict:
        return ex.interpolate(ex.vector(body.a, "a"), ex.vector(body.b, "b"), body.steps, ex.label(body.label))

    return app
