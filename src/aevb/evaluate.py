"""Evaluation on a data split: ELBO, importance-sampled log p(x), and what the codes are worth.

All values are nats per example (summed over pixels, averaged over images) unless the
name says otherwise; ``bits_per_dim`` is -log p(x) / (D ln 2), reported only for a discrete
likelihood (Bernoulli, discretized logistic: ``log_prob`` is then a log-probability of the data;
a Gaussian's is a density, whose "bits" would mean nothing).

- ``log_likelihood``: the k-sample importance-weighted estimate log (1/k) sum_i w_i with
  z_i ~ q(z|x) (Burda et al. 2016), each image encoded once and its samples decoded in chunks
  of bounded memory, log-mean-exp in float64 (``aevb.importance``). It is a stochastic lower
  bound on log p(x) whose bias shrinks as k grows; ``log_likelihood_stderr`` is the standard
  error of the mean over images.
- ``active_units``: dimensions u with Var_x(E_q[z_u | x]) > 0.01 (Burda et al. 2016, sec. 5.2).
- ``kl_dim_j``: the mean over images of KL(q(z_j|x) || N(0, 1)), one key per latent dimension.
- ``kl_per_layer``, ``active_units_per_layer``, ``latent_layer_sizes``, ``collapsed_layers``: for a model with
  several latent layers (``aevb.hierarchy``), each layer's KL and active units, top first.
- ``discrete_likelihood``, ``decoder_scale_at_clamp``: see ``decoder_statistics`` (the share of
  pixels whose decoder log-variance or log-scale sits at its clamp; when it is not small, the
  bound depends on the clamp, ``ModelConfig.log_var_min``/``log_var_max`` for a Gaussian).
- ``probe_logreg_accuracy`` / ``probe_knn_accuracy``: classifiers fitted on the posterior
  means (``embed``) of training images and scored on the evaluated split's codes.

A conditional model (``num_classes > 0``) is evaluated given each image's true label y:
``elbo`` bounds log p(x|y), ``log_likelihood`` estimates log p(x|y) (and ``bits_per_dim``
is of p(x|y)), the codes are E_q[z|x, y]; the result says so with ``conditional: true``.
It adds ``sample_label_accuracy``: how often a pixel-space logistic regression fitted on
real training images assigns a sample drawn for label c to class c (chance is 1/K), with
that classifier's own accuracy on the evaluated split's real images beside it
(``real_label_accuracy``) for scale.

Sample quality (``aevb evaluate --sample-quality``) lives in ``aevb.quality``: ``fd``, ``precision``,
``recall``, ``density``, ``coverage`` of samples and ``reconstruction_fd`` ... of reconstructions against
the split's images, in the features of a classifier aevb trains on the data set, with
``sample_quality_protocol`` (or ``sample_quality_unavailable``, saying why); not comparable with
Inception-FID.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .conditional import check_labels
from .distributions import analytic_kl_per_dim
from .hierarchy import has_layers, layer_statistics
from .importance import DEFAULT_CHUNK_BYTES, importance_log_likelihood
from .objectives import OBJECTIVES, elbo

ACTIVE_UNIT_THRESHOLD = 0.01


def _labelled_batches(x: Tensor, y: Tensor | None, batch_size: int):
    """(x, y) batches; y is None throughout for an unconditional model."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], None if y is None else y[start : start + batch_size]


def _mean_and_stderr(values: Tensor) -> tuple[float, float]:
    v = values.double()
    n = len(v)
    return v.mean().item(), (v.std(unbiased=True).item() / math.sqrt(n)) if n > 1 else float("nan")


@torch.no_grad()
def evaluate_elbo(model, x: Tensor, batch_size: int = 1000, samples: int = 1, kl: str = "analytic",
                  seed: int = 0, y: Tensor | None = None) -> dict[str, float]:
    """Mean ELBO, reconstruction term and KL over ``x`` (for a model without a posterior, the terms of its
    own default objective, e.g. an AE's reconstruction log-likelihood); ``y``: a conditional model's labels."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    caps = model.capabilities
    sums: dict[str, Tensor] = {}
    for xb, yb in _labelled_batches(x, y, batch_size):
        if caps.has_posterior:
            terms = elbo(model, xb, samples=samples, kl=kl, generator=gen, reduction="none", y=yb)
        else:
            terms = OBJECTIVES[caps.default_objective](model, xb, reduction="none", y=yb)
        for k, v in terms.items():
            if k != "loss":
                sums[k] = sums.get(k, 0) + v.double().sum()
    return {k: (v / len(x)).item() for k, v in sums.items()}


@torch.no_grad()
def log_likelihood(model, x: Tensor, k: int = 5000, batch_size: int = 100, chunk: int | None = None, seed: int = 0,
                   progress: bool = False, y: Tensor | None = None, max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                   fast: bool = True, gemm: str = "auto") -> Tensor:
    """Per-image importance-sampled estimate of log p(x) with k samples from q(z|x) (shape (N,), float64);
    with a conditional model's labels ``y``, of log p(x|y) with z ~ q(z|x, y).

    ``batch_size`` images are encoded at once; their (image, sample) rows are decoded in chunks whose
    working set stays under ``max_chunk_bytes`` (``chunk``, when given, also caps the samples per image
    in one chunk), so memory does not grow with k. See ``aevb.importance`` for the layout, the fast
    Bernoulli path (``fast=False`` forces the model's own ``log_prob``) and ``gemm``.
    """
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with tqdm(total=len(x), desc=f"log p(x), k={k}", disable=not progress, leave=False, unit="img") as bar:
        return importance_log_likelihood(model, x, k, gen, batch_size=batch_size, max_samples=chunk, y=y,
                                         max_chunk_bytes=max_chunk_bytes, fast=fast, gemm=gemm,
                                         progress=bar.update)


def bits_per_dim(log_px_nats: float, data_dim: int) -> float:
    return -log_px_nats / (data_dim * math.log(2))


@torch.no_grad()
def decoder_statistics(model, x: Tensor, batch_size: int = 1000, y: Tensor | None = None) -> dict[str, Any]:
    """What the likelihood p(x|z) decoded at the codes of ``x`` (``embed``, no sampling) says of itself.

    ``discrete_likelihood``: its ``log_prob`` is a log-probability of the data (the likelihood's
    ``discrete``), so bits/dim apply. ``decoder_scale_at_clamp``, for a likelihood whose scale is
    clamped (a learned Gaussian log-variance, clamped to [log_var_min, log_var_max]; the discretized
    logistic's log-scale): the fraction of the pixels of ``x`` whose scale sits at the clamp, where
    the bound no longer follows the data.
    """
    dev = model.device
    discrete, at_clamp, pixels = True, 0, 0
    for xb, yb in _labelled_batches(x, y, batch_size):
        yb = None if yb is None else yb.to(dev)
        lik = model.decode(model.embed(xb.to(dev), yb), yb)
        discrete = discrete and bool(getattr(lik, "discrete", False))
        mask = lik.at_clamp() if callable(getattr(lik, "at_clamp", None)) else None
        if mask is not None:
            at_clamp += int(mask.sum())
            pixels += mask.numel()
    out: dict[str, Any] = {"discrete_likelihood": discrete}
    if pixels:
        out["decoder_scale_at_clamp"] = at_clamp / pixels
    return out


@torch.no_grad()
def embed(model, x: Tensor, batch_size: int = 1000, y: Tensor | None = None) -> Tensor:
    """The deterministic codes of ``x`` (``model.embed``: a VAE's posterior means E_q[z|x], E_q[z|x, y] for
    a conditional model; an AE's codes), batch by batch on the model's device: (N, latent_dim) there."""
    dev = model.device
    return torch.cat([model.embed(xb.to(dev), None if yb is None else yb.to(dev))
                      for xb, yb in _labelled_batches(x, y, batch_size)])


@torch.no_grad()
def latent_statistics(model, x: Tensor, batch_size: int = 1000,
                      threshold: float = ACTIVE_UNIT_THRESHOLD, y: Tensor | None = None) -> dict[str, Any]:
    """Active units and the per-dimension KL of a VAE's posterior on ``x``.

    Returns ``active_units`` (int), ``active_unit_variances`` (list, Var_x E_q[z_u|x] per
    dimension) and ``kl_per_dim`` (list, mean over x of KL(q(z_u|x) || p(z_u)) in nats; None when the
    posterior and prior have no closed-form KL per dimension).
    """
    mus, kls = [], []
    for xb, yb in _labelled_batches(x, y, batch_size):
        q = model.encode(xb, yb)
        mus.append(q.mean.double())
        kl = analytic_kl_per_dim(q, model.prior)
        if kl is not None:
            kls.append(kl.double().sum(0))  # (Z,)
    mu = torch.cat(mus)
    var = mu.var(0, unbiased=True) if len(mu) > 1 else torch.zeros(mu.shape[1], dtype=torch.float64)
    kl = (torch.stack(kls).sum(0) / len(x)).tolist() if kls else None
    return {"active_units": int((var > threshold).sum().item()), "active_unit_variances": var.tolist(),
            "kl_per_dim": kl}


def probe_accuracy(train_codes: Tensor, train_labels: Tensor, test_codes: Tensor, test_labels: Tensor,
                   knn_k: int = 5, max_train: int = 10000, seed: int = 0) -> dict[str, float]:
    """Logistic-regression and k-NN test accuracy of classifiers fitted on codes.

    At most ``max_train`` training codes are used (a fixed random subset); codes are
    standardised with the training codes' mean and standard deviation.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    xtr = train_codes.detach().cpu().double().numpy()
    ytr = train_labels.detach().cpu().numpy()
    if len(xtr) > max_train:
        keep = np.random.default_rng(seed).choice(len(xtr), max_train, replace=False)
        xtr, ytr = xtr[keep], ytr[keep]
    xte = test_codes.detach().cpu().double().numpy()
    yte = test_labels.detach().cpu().numpy()
    scaler = StandardScaler().fit(xtr)
    xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    logreg = LogisticRegression(max_iter=1000).fit(xtr, ytr)
    knn = KNeighborsClassifier(n_neighbors=min(knn_k, len(xtr))).fit(xtr, ytr)
    return {"probe_logreg_accuracy": float(logreg.score(xte, yte)), "probe_knn_accuracy": float(knn.score(xte, yte)),
            "probe_train_size": len(xtr)}


@torch.no_grad()
def sample_label_accuracy(model, train_x: Tensor, train_y: Tensor, test_x: Tensor | None = None,
                          test_y: Tensor | None = None, n_per_class: int = 100, seed: int = 0,
                          max_train: int = 10000) -> dict[str, float]:
    """How often a conditional model's samples for label c look like class c.

    A multinomial logistic regression on raw pixels is fitted on (at most ``max_train``)
    real training images; ``n_per_class`` samples (decoded means of z ~ N(0, I)) are drawn
    for every label and classified. Returns ``sample_label_accuracy`` (chance: 1/K) and,
    given real test images, the classifier's accuracy on them (``real_label_accuracy``).
    """
    from sklearn.linear_model import LogisticRegression

    k = model.config.num_classes
    if k == 0:
        raise ValueError("sample_label_accuracy needs a conditional model (num_classes > 0)")
    check_labels(train_y, k, "training labels")
    xtr = train_x.detach().flatten(1).double().cpu().numpy()
    ytr = train_y.detach().cpu().numpy()
    if len(xtr) > max_train:
        keep = np.random.default_rng(seed).choice(len(xtr), max_train, replace=False)
        xtr, ytr = xtr[keep], ytr[keep]
    classifier = LogisticRegression(max_iter=500).fit(xtr, ytr)
    device = next(model.parameters()).device
    labels = torch.arange(k, device=device).repeat_interleave(n_per_class)  # (K * n,)
    g = torch.Generator(device=device).manual_seed(seed)
    samples = model.sample(len(labels), generator=g, y=labels)
    predicted = classifier.predict(samples.flatten(1).double().cpu().numpy())
    result = {"sample_label_accuracy": float((predicted == labels.cpu().numpy()).mean()),
              "sample_label_samples": len(labels)}
    if test_x is not None and test_y is not None:
        result["real_label_accuracy"] = float(
            classifier.score(test_x.detach().flatten(1).double().cpu().numpy(), test_y.detach().cpu().numpy()))
    return result


def evaluate(model, x: Tensor, k: int = 5000, batch_size: int = 100, chunk: int | None = None, seed: int = 0,
             progress: bool = False, y: Tensor | None = None, probe_train: tuple[Tensor, Tensor] | None = None,
             probe_max_train: int = 10000) -> dict[str, Any]:
    """The evaluation suite on ``x``, as one flat dict (nats per example).

    Keys: ``n``, ``k``, ``data_dim``; ``elbo``, ``reconstruction``, ``kl`` (an AE: ``reconstruction``);
    ``discrete_likelihood`` and, for a clamped decoder scale, ``decoder_scale_at_clamp``;
    a VAE adds ``log_likelihood``, ``log_likelihood_stderr``, ``bits_per_dim`` and ``elbo_bits_per_dim``
    (discrete likelihoods only), ``active_units``, ``kl_dim_0`` ...; with labels ``y`` and ``probe_train=(x_train, y_train)`` the
    probe accuracies ``probe_logreg_accuracy`` and ``probe_knn_accuracy``, fitted on at most ``probe_max_train``
    training images (0: all of them). ``k=0`` skips log p(x).

    ``y`` are the labels of ``x``. A conditional model needs them: every term is then given y
    (log p(x|y), ...) and the result has ``conditional: true``; with ``probe_train`` it also has
    ``sample_label_accuracy`` (see ``sample_label_accuracy``).
    """
    model.eval()
    d = model.config.data_dim
    conditional = model.config.conditional
    if conditional:
        check_labels(y, model.config.num_classes, "labels of the evaluated images")
    cond_y = y if conditional else None
    result: dict[str, Any] = {"n": len(x), "k": k, "data_dim": d, "conditional": conditional}
    result.update(evaluate_elbo(model, x, batch_size=max(batch_size, 500), seed=seed, y=cond_y))
    result.update(decoder_statistics(model, x, batch_size=max(batch_size, 500), y=cond_y))
    discrete = result["discrete_likelihood"]
    if model.capabilities.has_posterior:
        if "elbo" in result and discrete:
            result["elbo_bits_per_dim"] = bits_per_dim(result["elbo"], d)
        if k > 0:
            ll = log_likelihood(model, x, k=k, batch_size=batch_size, chunk=chunk, seed=seed, progress=progress,
                                y=cond_y)
            mean, se = _mean_and_stderr(ll)
            result.update(log_likelihood=mean, log_likelihood_stderr=se)
            if discrete:
                result["bits_per_dim"] = bits_per_dim(mean, d)
        stats = latent_statistics(model, x, y=cond_y)
        result["active_units"] = stats["active_units"]
        result["latent_dim"] = model.capabilities.latent_dim  # the whole code (every layer of a hierarchy)
        result.update({f"kl_dim_{j}": v for j, v in enumerate(stats["kl_per_dim"] or [])})
        if has_layers(model):  # a model with several latent layers: KL and active units layer by layer
            result.update(layer_statistics(model, x, seed=seed, y=cond_y))
    if y is not None and probe_train is not None and probe_train[1] is not None:
        x_tr, y_tr = probe_train
        if probe_max_train and len(x_tr) > probe_max_train:
            keep = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:probe_max_train]
            x_tr, y_tr = x_tr[keep.to(x_tr.device)], y_tr[keep.to(y_tr.device)]
        cap = probe_max_train or len(x_tr)  # 0: every training image
        with torch.no_grad():
            result.update(probe_accuracy(embed(model, x_tr, y=y_tr if conditional else None), y_tr,
                                         embed(model, x, y=cond_y), y, seed=seed, max_train=cap))
        if conditional:
            result.update(sample_label_accuracy(model, x_tr, y_tr, x, y, seed=seed, max_train=cap))
    return result


BINARIZATION = {  # DataConfig.binarize -> how the evaluated images were made binary (aevb.data.registry)
    "none": "none: grey levels as stored (binary data sets are binary already)",
    "static": "static: every split thresholded at 0.5",
    "dynamic": "dynamic: the evaluation splits sampled once as Bernoulli(pixel) with a fixed seed, the same for "
               "every run and independent of --seed (training batches are resampled)",
}


def evaluation_record(result: dict[str, Any], *, split: str, seed: int, binarize: str) -> dict[str, Any]:
    """What ``aevb evaluate`` prints as JSON and keeps as evaluation.json: ``result`` (``evaluate``) with its
    split, seed and binarization protocol, the per-dimension KL as one list ``kl_per_dim`` (in place of the
    ``kl_dim_j`` keys), and when it was written (UTC, ISO 8601)."""
    from datetime import datetime, timezone

    dims = sorted((int(k[len("kl_dim_"):]), k) for k in result if k.startswith("kl_dim_"))
    record = {k: v for k, v in result.items() if not k.startswith("kl_dim_")}
    if dims:
        record["kl_per_dim"] = [result[k] for _, k in dims]
    record.update(split=split, seed=seed, binarization=BINARIZATION.get(binarize, binarize),
                  written=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return record
