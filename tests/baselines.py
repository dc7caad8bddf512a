"""Independent-pixel baselines: the best a model that ignores its latent code can hope for.

Each fits a product of per-pixel distributions on a training split (N, C, H, W) and returns the
mean over the test images of the summed log-likelihood, in nats per image, as aevb reports log p(x).
A decoder that ignores z is such a product, so a model whose log p(x) (or ELBO) is not above
these numbers has not shown that it uses z. Written with torch arithmetic only, independent of
aevb's likelihood classes.
"""

from __future__ import annotations

import math

import torch


def bernoulli_baseline(train_x: torch.Tensor, test_x: torch.Tensor) -> float:
    """prod_d Bernoulli(x_d; p_d), p_d the training mean of pixel d with add-one smoothing (never 0 or 1).

    Grey training values are the pixels' Bernoulli means, so this is also the fit to a dynamically
    binarized training split (the expected count of ones)."""
    n = len(train_x)
    p = ((train_x.double().sum(0) + 1) / (n + 2)).flatten()  # (D,)
    x = test_x.double().flatten(1)  # (N, D)
    return (x * p.log() + (1 - x) * (1 - p).log()).sum(1).mean().item()


def gaussian_baseline(train_x: torch.Tensor, test_x: torch.Tensor, min_var: float = 1e-4) -> float:
    """prod_d N(x_d; m_d, v_d), m_d and v_d the training mean and variance of pixel d (v_d >= min_var)."""
    t = train_x.double().flatten(1)
    m, v = t.mean(0), t.var(0, unbiased=False).clamp(min=min_var)
    x = test_x.double().flatten(1)
    return (-0.5 * (math.log(2 * math.pi) + v.log() + (x - m) ** 2 / v)).sum(1).mean().item()


def discretized_gaussian_baseline(train_x: torch.Tensor, test_x: torch.Tensor, min_std: float = 1 / 255) -> float:
    """prod_d P(x_d) over the 8-bit values k / 255: pixel d's Gaussian (training mean and standard
    deviation, >= min_std) integrated over each value's bin, the end bins open: a probability of
    the pixel values, comparable with the discretized logistic's log p(x)."""
    t = train_x.double().flatten(1)
    m, s = t.mean(0), t.std(0, unbiased=False).clamp(min=min_std)
    x = test_x.double().flatten(1)
    half = 0.5 / 255
    upper = torch.where(x > 1 - half, torch.ones_like(x), torch.special.ndtr((x + half - m) / s))
    lower = torch.where(x < half, torch.zeros_like(x), torch.special.ndtr((x - half - m) / s))
    return (upper - lower).clamp(min=1e-300).log().sum(1).mean().item()


def bits_per_dim(log_px_nats: float, data_dim: int) -> float:
    return -log_px_nats / (data_dim * math.log(2))
