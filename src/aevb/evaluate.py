"""Evaluation on a data split: the ELBO and the importance-sampled log p(x).

All values are nats per example (summed over pixels, averaged over images) unless the
name says otherwise; ``bits_per_dim`` is -log p(x) / (D ln 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .objectives import ae_loss, elbo, iwae_bound


def _batches(x: Tensor, batch_size: int):
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def _mean_and_stderr(values: Tensor) -> tuple[float, float]:
    v = values.double()
    n = len(v)
    return v.mean().item(), (v.std(unbiased=True).item() / math.sqrt(n)) if n > 1 else float("nan")


@torch.no_grad()
def evaluate_elbo(model, x: Tensor, batch_size: int = 1000, samples: int = 1, kl: str = "analytic",
                  seed: int = 0) -> dict[str, float]:
    """Mean ELBO, reconstruction term and KL over ``x`` (for an AE: its reconstruction log-likelihood)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    sums: dict[str, Tensor] = {}
    for xb in _batches(x, batch_size):
        if model.config.kind == "ae":
            terms = ae_loss(model, xb, reduction="none")
        else:
            terms = elbo(model, xb, samples=samples, kl=kl, generator=gen, reduction="none")
        for k, v in terms.items():
            if k != "loss":
                sums[k] = sums.get(k, 0) + v.double().sum()
    return {k: (v / len(x)).item() for k, v in sums.items()}


@torch.no_grad()
def log_likelihood(model, x: Tensor, k: int = 5000, batch_size: int = 100, chunk: int = 500, seed: int = 0,
                   progress: bool = False) -> Tensor:
    """Per-image importance-sampled estimate of log p(x) with k samples from q(z|x) (shape (N,))."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    for xb in tqdm(list(_batches(x, batch_size)), desc=f"log p(x), k={k}", disable=not progress, leave=False):
        out.append(iwae_bound(model, xb, k, generator=gen, chunk=min(chunk, k), reduction="none")["iwae"].double())
    return torch.cat(out)


def bits_per_dim(log_px_nats: float, data_dim: int) -> float:
    return -log_px_nats / (data_dim * math.log(2))


@torch.no_grad()
def embed(model, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Posterior means E_q[z|x] (an AE's codes), shape (N, Z); never sampled."""
    return torch.cat([model.embed(xb) for xb in _batches(x, batch_size)])


@torch.no_grad()
def latent_statistics(model, x: Tensor, batch_size: int = 1000, threshold: float = 0.01) -> dict:
    """Active units (Burda et al. 2016: dimension j is active when Var_x(E_q[z_j|x]) > 0.01)
    and the KL of each latent dimension averaged over x (nats)."""
    mus, kls = [], []
    for xb in _batches(x, batch_size):
        q = model.encode(xb)
        mus.append(q.mu.double())
        kls.append(q.kl_per_dim().double())
    mu, kl = torch.cat(mus), torch.cat(kls)
    var = mu.var(0, unbiased=True) if len(mu) > 1 else torch.zeros(mu.shape[1], dtype=torch.float64)
    return {"active_units": int((var > threshold).sum()), "latent_dim": mu.shape[1],
            "activity": var.tolist(), "kl_per_dim": kl.mean(0).tolist()}


def probe_accuracy(train_codes: Tensor, train_y: Tensor, test_codes: Tensor, test_y: Tensor,
                   k: int = 5, max_train: int = 10000, seed: int = 0) -> dict[str, float]:
    """How good the codes are as features: logistic regression and k-NN (scikit-learn) fitted on
    (at most ``max_train``) training codes, scored on the test codes. Features are standardised."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train_codes), generator=g)[:max_train]
    xtr, ytr = train_codes[idx].cpu().numpy(), train_y[idx].cpu().numpy()
    xte, yte = test_codes.cpu().numpy(), test_y.cpu().numpy()
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(xtr, ytr)
    knn = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k)).fit(xtr, ytr)
    return {"probe_logreg_accuracy": float(logreg.score(xte, yte)), "probe_knn_accuracy": float(knn.score(xte, yte)),
            "probe_train_size": len(idx)}


def evaluate(model, x: Tensor, k: int = 5000, batch_size: int = 100, chunk: int = 500, seed: int = 0,
             progress: bool = False, probe: tuple[Tensor, Tensor, Tensor] | None = None) -> dict:
    """The evaluation suite on images ``x``, nats per example:

    ``elbo`` (with its ``reconstruction`` and ``kl`` terms), ``log_likelihood``: the k-sample
    importance-sampled log p(x) (the IWAE bound) with its standard error over images,
    ``bits_per_dim``, ``active_units`` and ``kl_per_dim`` (VAE), and with
    ``probe=(train_x, train_y, test_y)`` the logistic-regression and k-NN accuracy of
    the posterior means as features (train codes from train_x, scored on x's codes).
    """
    model.eval()
    d = model.config.data_dim
    result: dict = {"n": len(x), "k": k, "data_dim": d}
    result.update(evaluate_elbo(model, x, batch_size=max(batch_size, 500), seed=seed))
    if model.config.kind == "vae":
        ll = log_likelihood(model, x, k=k, batch_size=batch_size, chunk=chunk, seed=seed, progress=progress)
        mean, se = _mean_and_stderr(ll)
        result.update(log_likelihood=mean, log_likelihood_stderr=se, bits_per_dim=bits_per_dim(mean, d),
                      elbo_bits_per_dim=bits_per_dim(result["elbo"], d))
        result.update(latent_statistics(model, x))
    if probe is not None:
        train_x, train_y, test_y = probe
        result.update(probe_accuracy(embed(model, train_x), train_y, embed(model, x), test_y, seed=seed))
    return result
