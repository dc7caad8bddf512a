"""Sample quality offline: Frechet distance, precision/recall and density/coverage in the features of a
classifier aevb trains itself.

    aevb evaluate runs/mnist --sample-quality --k 0          # fd, precision, recall, density, coverage

The features are the penultimate layer (``FEATURES`` units, after a ReLU) of a small convolutional
classifier (``FeatureNet``) trained, seeded, on the training split of the run's data set, or, for a data
set without labels, of the first labelled built-in data set of the same shape (binarized MNIST borrows
MNIST's); with neither the metric is unavailable (``QualityUnavailable``, one line saying why). A trained
net is cached in ``feature_cache_dir()/<dataset>-<checksum>-v<FEATURE_NET_VERSION>/`` (safetensors weights
and ``info.json`` with its test accuracy, seed, recipe and the data checksum), so every run of a data set
is scored by the same net.

The numbers are NOT comparable with the Inception-FID of papers: a different network, trained on the data
set itself, in a 128-D feature space. They compare models of one data set scored by one feature net
(``FEATURE_NET_VERSION`` and the checksum say which). ``docs/sample-quality.md`` gives the protocol.

- ``frechet_distance``: ||m1 - m2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) of the features' means and
  covariances (torchmetrics' ``FrechetInceptionDistance``, given the features; float64).
- ``prdc``: improved precision and recall (Kynkaanniemi et al. 2019) and density and coverage (Naeem et
  al. 2020) with k-nearest-neighbour balls (k = 5), distances in float64, chunked so that 10,000 x 10,000
  fits in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

FEATURE_NET_VERSION = 1  # bump when the architecture or the training recipe changes: old caches are not reused
FEATURES = 128  # width of the penultimate layer, the feature space
NEAREST_K = 5  # the k of the k-NN balls (both papers' default)
DEFAULT_EPOCHS = 2
MIN_STEPS = 750  # a small training split is passed over more often than DEFAULT_EPOCHS, for at least this many steps
DEFAULT_SEED = 0
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
CHUNK = 1024  # rows of a distance matrix computed at once: 1024 x 10,000 float64 is 80 MB


class QualityUnavailable(ValueError):
    """The metric cannot be computed for this data set (no labels and no labelled data set of its shape)."""


# ---------------------------------------------------------------------------------------------- the network


class FeatureNet(nn.Module):
    """conv3x3(16)-ReLU-maxpool, conv3x3(32)-ReLU-maxpool, linear(FEATURES)-ReLU (the features), linear(classes).

    Input (B, C, H, W) in [0, 1] with H, W >= 4; ``features(x)`` -> (B, FEATURES) float64,
    ``forward(x)`` -> class logits (B, num_classes).
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c, h, w = shape
        if h < 4 or w < 4:
            raise QualityUnavailable(f"images of {h}x{w} pixels are too small for the feature net (at least 4x4)")
        self.shape, self.num_classes = tuple(shape), num_classes
        self.num_features = FEATURES  # read by torchmetrics' FrechetInceptionDistance
        self.body = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 16, H/2, W/2)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, H/4, W/4)
            nn.Flatten(), nn.Linear(32 * (h // 4) * (w // 4), FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """The penultimate activations of ``x`` (N, C, H, W), batch by batch: (N, FEATURES) float64 on the CPU."""
        self.eval()
        dev = next(self.parameters()).device
        return torch.cat([self.body(x[i:i + batch_size].to(dev).float()).double().cpu()
                          for i in range(0, len(x), batch_size)]) if len(x) else torch.zeros(0, FEATURES).double()


@dataclass
class FeatureExtractor:
    """A trained ``FeatureNet`` and what it is: ``info`` holds ``dataset``, ``checksum``, ``version``, ``seed``,
    ``epochs``, ``n_train``, ``test_accuracy`` (on the data set's test split), ``shape``, ``features``."""

    net: FeatureNet
    info: dict[str, Any]

    def __call__(self, x: Tensor) -> Tensor:
        return self.net.features(x)


@torch.no_grad()
def accuracy(net: FeatureNet, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """The share of ``x`` that ``net`` assigns to its label ``y``."""
    net.eval()
    right = sum(int((net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                for i in range(0, len(x), batch_size))
    return right / len(x)


def train_feature_net(x: Tensor, y: Tensor, num_classes: int, test: tuple[Tensor, Tensor] | None = None,
                      epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED,
                      batch_size: int = BATCH_SIZE, min_steps: int | None = None) -> FeatureExtractor:
    """A ``FeatureNet`` trained with Adam on images ``x`` (N, C, H, W) in [0, 1] and labels ``y`` (N,), for
    ``epochs`` passes or as many more as ``min_steps`` optimizer steps take (default ``MIN_STEPS``).

    Seeded: the initialisation and the batch order come from ``seed`` alone (the global random state
    is left as it was). ``test=(x, y)`` records ``test_accuracy``.
    """
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(tuple(x.shape[1:]), num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    g = torch.Generator().manual_seed(seed)
    net.train()
    min_steps = MIN_STEPS if min_steps is None else min_steps
    epochs = max(epochs, math.ceil(min_steps / math.ceil(len(x) / batch_size)))
    for _ in range(epochs):
        for rows in torch.randperm(len(x), generator=g).split(batch_size):
            loss = nn.functional.cross_entropy(net(x[rows]), y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    info = {"version": FEATURE_NET_VERSION, "seed": seed, "epochs": epochs, "batch_size": batch_size,
            "learning_rate": LEARNING_RATE, "n_train": len(x), "shape": list(net.shape), "num_classes": num_classes,
            "features": FEATURES, "train_seconds": round(time.perf_counter() - start, 1)}
    if test is not None:
        info.update(test_accuracy=accuracy(net, *test), n_test=len(test[0]))
    return FeatureExtractor(net, info)


# ---------------------------------------------------------------------------------------------- the cache


def feature_cache_dir() -> Path:
    """Where trained feature nets are kept: ``$AEVB_FEATURES_DIR``, else ``features/`` in aevb's cache folder
    (``$XDG_CACHE_HOME/aevb`` or ``~/.cache/aevb``, as for downloaded data)."""
    from .data.files import cache_dir

    return Path(os.environ["AEVB_FEATURES_DIR"]) if os.environ.get("AEVB_FEATURES_DIR") else cache_dir() / "features"


def data_checksum(name: str, x: Tensor, y: Tensor | None) -> str:
    """What identifies the training data of a feature net: for a built-in data set read from files, the
    sha256 of its files' recorded sha256s (``aevb.data.registry``, verified when the files are read) and of
    the split's size; otherwise the sha256 of the training images (float32) and labels (int64) themselves."""
    from .data.registry import DATASETS

    h = hashlib.sha256()
    info = DATASETS.get(name)
    if info is not None and info.files:
        h.update(" ".join(sorted(spec.sha256 for spec in info.files)).encode())
        h.update(f" n={len(x)}".encode())
    else:
        h.update(x.detach().cpu().float().contiguous().numpy().tobytes())
        h.update(y.detach().cpu().long().contiguous().numpy().tobytes())
    return h.hexdigest()


def _entry(name: str, checksum: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:40] or "data"
    return feature_cache_dir() / f"{slug}-{checksum[:16]}-v{FEATURE_NET_VERSION}"


def _read_cached(folder: Path, checksum: str) -> FeatureExtractor | None:
    """The net cached in ``folder``, or None when there is none (or it is unreadable or of another version)."""
    from safetensors.torch import load_file

    try:
        info = json.loads((folder / "info.json").read_text())
        if info.get("version") != FEATURE_NET_VERSION or info.get("checksum") != checksum:
            return None
        net = FeatureNet(tuple(info["shape"]), int(info["num_classes"]))
        net.load_state_dict(load_file(folder / "weights.safetensors"))
    except (OSError, ValueError, KeyError, RuntimeError):
        return None
    net.eval()
    return FeatureExtractor(net, info)


def _write_cached(folder: Path, extractor: FeatureExtractor) -> None:
    from safetensors.torch import save

    from .checkpoint import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in extractor.net.state_dict().items()}
    atomic_write(folder / "weights.safetensors", save(state))
    atomic_write(folder / "info.json", (json.dumps(extractor.info, indent=2) + "\n").encode())  # last: marks it whole


def cached_feature_net(name: str, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], num_classes: int,
                       epochs: int = DEFAULT_EPOCHS, seed: int = DEFAULT_SEED,
                       log: Callable[[str], None] | None = None) -> FeatureExtractor:
    """The feature net of data set ``name``: read from the cache when one was trained on the same data
    (checksum) and version, else trained on ``train`` (images, labels), scored on ``test`` and cached.
    A recipe other than the default (``epochs``, ``seed``) is never cached."""
    checksum = data_checksum(name, *train)
    folder = _entry(name, checksum)
    default = (epochs, seed) == (DEFAULT_EPOCHS, DEFAULT_SEED)
    if default and (found := _read_cached(folder, checksum)) is not None:
        return found
    if log:
        log(f"training the {name} feature net ({epochs} epochs on {len(train[0])} images; cached in {folder})")
    extractor = train_feature_net(*train, num_classes, test=test, epochs=epochs, seed=seed)
    extractor.info.update(dataset=name, checksum=checksum)
    if default:
        _write_cached(folder, extractor)
    return extractor


def _labelled_same_shape(shape: tuple[int, ...]) -> str | None:
    """The first labelled built-in data set whose images have ``shape`` (C, H, W), or None."""
    from .data.registry import DATASETS

    return next((info.name for info in DATASETS.values() if info.num_classes and tuple(info.shape) == tuple(shape)),
                None)


def feature_net_for(data_cfg, shape: tuple[int, int, int], labelled: bool,
                    log: Callable[[str], None] | None = None) -> tuple[FeatureExtractor, str]:
    """The feature net that scores images of the data set ``data_cfg`` (an ``aevb.config.DataConfig``) whose
    images have ``shape`` and labels or not (``labelled``), and a sentence on where its features come from.

    A labelled data set: a net trained on its own training split (grey levels as stored, no binarization or
    subset). Unlabelled: the net of the first labelled built-in data set of the same shape; with none,
    ``QualityUnavailable`` names the data set and the reason.
    """
    from .data import load_dataset

    name = data_cfg.dataset
    source_cfg = replace(data_cfg, binarize="none", subset=None)
    note = f"a classifier trained on the training split of {name}"
    if not labelled:
        borrowed = _labelled_same_shape(shape)
        if borrowed is None:
            c, h, w = shape
            raise QualityUnavailable(
                f"sample quality is unavailable for {name}: it has no labels to train a feature classifier on, "
                f"and no labelled built-in data set has its shape ({c}x{h}x{w})")
        source_cfg = replace(source_cfg, dataset=borrowed, valid_size=None, image_size=None, channels=None)
        note = (f"{name} has no labels: a classifier trained on the training split of {borrowed} "
                f"(a labelled data set of the same shape)")
    try:
        ds = load_dataset(source_cfg)
    except (ValueError, OSError) as e:
        raise QualityUnavailable(f"sample quality is unavailable: the feature net's data set "
                                 f"{source_cfg.dataset} could not be read ({e})") from None
    if ds.train.y is None or not ds.num_classes:
        raise QualityUnavailable(f"sample quality is unavailable for {name}: its training split has no labels")
    extractor = cached_feature_net(ds.name, (ds.train.x, ds.train.y), (ds.test.x, ds.test.y), ds.num_classes, log=log)
    return extractor, note


# ---------------------------------------------------------------------------------------------- the metrics


class _Given(nn.Module):
    """A pass-through "feature extractor" for torchmetrics: the features are computed once, by ``FeatureNet``,
    and shared with ``prdc``; float64 in, so torchmetrics returns its float64 result."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """||m_r - m_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)) of two feature sets (N, F) and (M, F), with means m
    and unbiased covariances S; computed by torchmetrics' ``FrechetInceptionDistance`` in float64."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"the Frechet distance needs at least 2 feature vectors on each side "
                         f"(got {len(real)} and {len(fake)})")
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]), normalize=True)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    return float(fid.compute())


def _chunks(x: Tensor, size: int = CHUNK):
    for start in range(0, len(x), size):
        yield start, x[start:start + size]


def knn_radii(x: Tensor, k: int = NEAREST_K) -> Tensor:
    """The distance from each row of ``x`` (N, F) to its k-th nearest other row: (N,) float64."""
    if len(x) <= k:
        raise ValueError(f"k-nearest-neighbour balls with k = {k} need more than {k} feature vectors (got {len(x)})")
    x = x.double()
    # The (k+1)-th smallest distance of a row counts the row itself (distance 0) as the first.
    return torch.cat([torch.cdist(rows, x).topk(k + 1, dim=1, largest=False).values[:, k] for _, rows in _chunks(x)])


def prdc(real: Tensor, fake: Tensor, k: int = NEAREST_K) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` (M, F) against ``real`` (N, F).

    With B_k(v) the ball around v of radius the distance to v's k-th nearest neighbour in its own set:
    precision = share of fakes inside some real ball, recall = share of reals inside some fake ball
    (Kynkaanniemi et al. 2019); density = (1 / kM) sum over fakes of the number of real balls holding it,
    coverage = share of reals whose ball holds some fake (Naeem et al. 2020). "Inside" is strict
    (distance < radius), as in Naeem et al.'s code: identical sets give precision, recall and coverage 1 and
    density 1 (each real ball holds its centre and k - 1 neighbours). Float64; one (CHUNK, N) block of
    distances at a time.
    """
    real, fake = real.double(), fake.double()
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    in_real_ball = torch.zeros(len(fake), dtype=torch.bool)
    real_balls_holding = torch.zeros(len(fake), dtype=torch.float64)
    in_fake_ball = torch.zeros(len(real), dtype=torch.bool)
    nearest_fake = torch.full((len(real),), math.inf, dtype=torch.float64)
    for start, rows in _chunks(fake):
        d = torch.cdist(rows, real)  # (chunk, N): fake rows to every real
        inside = d < r_real  # fake j inside real ball i
        in_real_ball[start:start + len(rows)] = inside.any(1)
        real_balls_holding[start:start + len(rows)] = inside.sum(1).double()
        in_fake_ball |= (d < r_fake[start:start + len(rows), None]).any(0)
        nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
    return {"precision": in_real_ball.double().mean().item(), "recall": in_fake_ball.double().mean().item(),
            "density": (real_balls_holding.sum() / (k * len(fake))).item(),
            "coverage": (nearest_fake < r_real).double().mean().item()}


def quality_metrics(real: Tensor, fake: Tensor, k: int = NEAREST_K) -> dict[str, float]:
    """``fd``, ``precision``, ``recall``, ``density``, ``coverage`` of feature sets ``fake`` against ``real``."""
    return {"fd": frechet_distance(real, fake), **prdc(real, fake, k)}


# ---------------------------------------------------------------------------------------------- a run's images

REAL_IMAGES = {  # DataConfig.binarize -> the real images samples and reconstructions are compared with
    "none": "the split's images as stored (the model was trained on them as they are)",
    "static": "the split's images thresholded at 0.5, as the model was trained on them",
    "dynamic": "the split's grey images, the per-pixel expectation of the Bernoulli draws the model was trained "
               "on, which its decoder means estimate",
}
SAMPLE_KEYS = ("fd", "precision", "recall", "density", "coverage")
RECONSTRUCTION_KEYS = tuple(f"reconstruction_{key}" for key in SAMPLE_KEYS)


def reference_config(data_cfg):
    """The data configuration whose split holds the real images of the comparison (``REAL_IMAGES``): the
    run's own, except that dynamic binarization is replaced by its expectation, the grey images."""
    return replace(data_cfg, binarize="none") if data_cfg.binarize == "dynamic" else data_cfg


@torch.no_grad()
def _in_batches(fn: Callable[[int, int], Tensor], n: int, batch_size: int) -> Tensor:
    """``fn(start, stop)`` for consecutive row ranges of ``n``, concatenated on the CPU and clamped to [0, 1]."""
    return torch.cat([fn(i, min(i + batch_size, n)).float().cpu() for i in range(0, n, batch_size)]).clamp(0, 1)


def prior_samples(model, n: int, seed: int = 0, y: Tensor | None = None, batch_size: int = 1000) -> Tensor:
    """``n`` decoder means of z ~ p(z) (``model.sample``; a conditional model draws sample i for label y[i]),
    from one generator seeded with ``seed``, batch by batch: (n, C, H, W) on the CPU, clamped to [0, 1]."""
    g = torch.Generator(device=model.device).manual_seed(seed)
    return _in_batches(lambda i, j: model.sample(j - i, generator=g, y=None if y is None else y[i:j].to(model.device)),
                       n, batch_size)


def reconstructions(model, x: Tensor, y: Tensor | None = None, batch_size: int = 1000) -> Tensor:
    """The decoder means at the codes of ``x`` (``model.reconstruct``, no sampling): (N, C, H, W) on the CPU,
    clamped to [0, 1]."""
    dev = model.device
    return _in_batches(lambda i, j: model.reconstruct(x[i:j].to(dev), None if y is None else y[i:j].to(dev)),
                       len(x), batch_size)


def sample_quality(model, reference: Tensor, inputs: Tensor, extractor: FeatureExtractor, *, seed: int = 0,
                   y: Tensor | None = None, samples: Tensor | None = None, k: int = NEAREST_K) -> dict[str, float]:
    """The sample and reconstruction quality of ``model`` against the real images ``reference`` (N, C, H, W).

    ``samples``: the images to score (default: ``prior_samples`` of N, seeded); reconstructions are of
    ``inputs`` (the same N images as the model sees them, e.g. binarized); ``y``: a conditional model's
    labels of the N images (sample i is drawn for y[i]). Keys ``SAMPLE_KEYS`` for the samples and
    ``RECONSTRUCTION_KEYS`` for the reconstructions, each against the features of ``reference``.
    """
    cond_y = y if model.config.conditional else None
    model.eval()
    real = extractor(reference)
    if samples is None:
        samples = prior_samples(model, len(reference), seed=seed, y=cond_y)
    out = quality_metrics(real, extractor(samples.float().cpu().clamp(0, 1)), k)
    recon = quality_metrics(real, extractor(reconstructions(model, inputs, cond_y)), k)
    out.update({f"reconstruction_{key}": value for key, value in recon.items()})
    return out


def run_sample_quality(run, split: str = "test", limit: int | None = None, seed: int = 0, sampler: str | None = None,
                       data_dir: str | None = None, k: int = NEAREST_K,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``sample_quality`` of a loaded run (``aevb.load``) on the first ``limit`` images of ``split`` (all by
    default), as ``aevb evaluate --sample-quality`` records it: the metric keys and ``sample_quality_protocol``
    (what was compared, how, and the feature net). ``sampler``: draw the samples with ``run.sample(n,
    sampler=NAME, seed=seed)`` (a post-hoc sampler fitted by ``aevb fit-prior``) instead of the model's prior.
    For a data set whose feature net cannot exist, ``{"sample_quality_unavailable": REASON}``.
    """
    from .data import load_dataset

    data_cfg = run.config.data if data_dir is None else replace(run.config.data, data_dir=data_dir)
    seen = run.dataset(data_dir).split(split)  # as the model sees it
    ref_cfg = reference_config(data_cfg)
    reference = seen if ref_cfg == data_cfg else load_dataset(ref_cfg).split(split)
    n = len(seen) if limit is None else min(limit, len(seen))
    x, ref = seen.x[:n], reference.x[:n]
    y = None if seen.y is None else seen.y[:n]
    if sampler is not None and not callable(getattr(run, "sample", None)):
        raise QualityUnavailable(f"sampler {sampler!r} needs post-hoc samplers (aevb fit-prior), which this "
                                 "version of aevb lacks; leave out --sampler to sample from the model's prior")
    try:
        extractor, note = feature_net_for(data_cfg, tuple(ref.shape[1:]), labelled=seen.y is not None, log=log)
    except QualityUnavailable as e:
        return {"sample_quality_unavailable": str(e)}
    if sampler is not None:
        samples = run.sample(n, sampler=sampler, seed=seed)
        drawn = f"images from the run's post-hoc sampler {sampler!r} (run.sample, seed {seed})"
    else:
        samples = None
        drawn = f"decoder means of z ~ p(z), the model's prior, from a generator seeded with {seed}"
    if run.config.model.conditional:
        drawn += "; sample i drawn for the label of real image i"
    result = sample_quality(run.model, ref, x, extractor, seed=seed, y=y, samples=samples, k=k)
    info = extractor.info
    result["sample_quality_protocol"] = {
        "split": split, "n_real": n, "n_samples": n, "k": k, "seed": seed, "sampler": sampler,
        "real_images": REAL_IMAGES.get(data_cfg.binarize, data_cfg.binarize),
        "samples": drawn + "; clamped to [0, 1]",
        "reconstructions": "decoder means at the codes (model.reconstruct) of the same real images as the model "
                           "sees them; clamped to [0, 1]",
        "features": f"the {FEATURES} penultimate ReLU units of {note}",
        "feature_net": {key: info.get(key) for key in ("dataset", "version", "checksum", "test_accuracy", "n_test",
                                                      "seed", "epochs", "n_train")},
        "comparable_with_inception_fid": False,
    }
    return result

