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


def evaluate(model, x: Tensor, k: int = 5000, batch_size: int = 100, chunk: int = 500, seed: int = 0,
             progress: bool = False) -> dict[str, float]:
    """Test ELBO and the k-sample IWAE bound (the importance-sampled log p(x)), in nats per example."""
    model.eval()
    d = model.config.data_dim
    result: dict[str, float] = {"n": len(x), "k": k, "data_dim": d}
    result.update(evaluate_elbo(model, x, batch_size=max(batch_size, 500), seed=seed))
    if model.config.kind == "vae":
        ll = log_likelihood(model, x, k=k, batch_size=batch_size, chunk=chunk, seed=seed, progress=progress)
        mean, se = _mean_and_stderr(ll)
        result.update(log_likelihood=mean, log_likelihood_stderr=se, bits_per_dim=bits_per_dim(mean, d))
    return result
