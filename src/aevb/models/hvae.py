"""A top-down hierarchical VAE (``--model hvae``): L stochastic layers, inferred top down as in the
ladder VAE (Sonderby et al. 2016), VDVAE (Child 2021) and NVAE (Vahdat & Kautz 2020).

    bottom-up   x -> d_{L-1} (bottom) -> ... -> d_0 (top)            deterministic features, one per layer
    top-down    s_0 = 0;  for layer i = 0 (top) .. L-1 (bottom):
                    p(z_i | z_<i)    = N(mu_p(s_i), sigma_p(s_i))     (layer 0: N(0, I))
                    q(z_i | x, z_<i) = N(mu_p + dmu(s_i, d_i), sigma_p * exp(dlog_sigma(s_i, d_i)))
                    s_{i+1} = r_i(s_i + W_i z_i),  r(v) = v + cell(v)   a residual cell
    p(x | z)    the decoder reads [z_{L-1}, s_{L-1}] (mlp) or the last state s_L at full resolution (conv)

Layers are numbered from the top: layer 0 is the top, "z_<i" are the layers above layer i. The prior and
the posterior of a layer read the same top-down state (the posterior as a residual on the prior, as NVAE
does), so the generative path is trained by both. With one layer (L = 1) and ``architecture="mlp"`` the
model is exactly the ``vae`` family's: x -> hidden -> (mu, log_var), z -> hidden -> p(x|z) (a test checks).

``architecture="conv"``: the bottom-up pass is a stride-2 convolution per entry of ``conv_channels``, each
resolution followed by one residual block per latent layer it holds; latent layers are feature maps
(``latent_sizes`` channels) split over the resolutions, the top ones at the coarsest; the top-down pass
runs residual cells at each resolution and upsamples with transposed convolutions to the image's size
(any size, 1 or 3 channels), ending in the configured likelihood (the discretized logistic for 8-bit images).

The code (``embed``, ``latent_shape``, ``decode``'s input, the explorer's sliders) is every layer's z,
flattened and concatenated top first: [z_0, z_1, ..., z_{L-1}] (B, sum of the layers' sizes). ``decode``
runs the top-down pass with those values; ``embed`` takes each layer's posterior mean along the path of
means. ``encode`` returns the whole hierarchy q(z|x) = prod_i q(z_i | x, z_<i) as one posterior object, and
``prior`` the whole p(z) = prod_i p(z_i | z_<i): the objectives, the importance-sampled log p(x) (the
hierarchy as the proposal) and every figure use them as they use any other family's.

Training (``hierarchical_elbo``, the family's default objective): one top-down pass, the analytic KL of each
layer at the sampled path, KL warm-up by the trainer's ``kl_schedule`` (the weight multiplies every layer's
term) with NVAE's KL balancing while the weight is below 1 (``kl_balance``: each layer's term reweighted by
its share of the KL per latent dimension, so that no layer is pushed to collapse while the others grow; under
torchrun each process weighs by its own rows of the batch, so a warm-up with balancing is not bit-for-bit that
of one process, as it is without).
Stability: every Gaussian's log-variance is clamped in one function (``clamped_gaussian``, to
[log_var_min, log_var_max]); the discretized logistic clamps its own log-scale; the trainer skips steps
whose gradient norm is not finite or above ``skip_grad_norm``; an exponential moving average of the weights
(``ema_decay``), kept in buffers and saved with the model, replaces the weights whenever the model is in
eval mode (evaluation, sampling, the explorer), and the trained weights come back in train mode.
Every z and log-density is float32 under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..config import ConfigError, ModelConfig
from ..distributions import DiagonalGaussian, standard_normal
from ..nets import MLPDecoder, _ACTIVATIONS, _params_per_pixel, as_likelihood, conv_sizes, init_normal_, mlp, run_mlp
from ..objectives import OBJECTIVES, as_images, encoder_input, reduce_terms
from .base import Capabilities, LatentVariableModel
from .registry import Family, register

Temperature = float | Sequence[float]


@dataclass
class HVAEConfig(ModelConfig):
    """The hierarchy's settings, beside the networks' (``hidden``: the bottom-up MLP, whose last width is
    the top-down state's; ``conv_channels``: the channels at each resolution).

    ``latent_layers``: L, the stochastic layers. ``latent_sizes``: each layer's size, top first (mlp:
    dimensions; conv: channels of the layer's feature map); empty: ``latent_dim`` for every layer (given,
    ``latent_dim`` becomes the top layer's size). ``kl_balance``: NVAE's KL balancing during the KL warm-up.
    ``ema_decay``: the decay of the weights' moving average used in eval mode (0: none).
    """

    family: str = "hvae"
    latent_layers: int = 2
    latent_sizes: tuple[int, ...] = ()
    kl_balance: bool = True
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        super().__post_init__()
        self.latent_sizes = tuple(int(v) for v in self.latent_sizes)
        if not (isinstance(self.latent_layers, int) and not isinstance(self.latent_layers, bool)
                and 1 <= self.latent_layers <= 64):
            raise ConfigError(f"latent_layers must be an integer from 1 to 64; got {self.latent_layers!r}")
        if self.latent_sizes:
            if len(self.latent_sizes) != self.latent_layers or min(self.latent_sizes) < 1:
                raise ConfigError(f"latent_sizes must give {self.latent_layers} positive sizes (one per latent layer, "
                                  f"top first); got {self.latent_sizes}")
            self.latent_dim = self.latent_sizes[0]
        if not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise ConfigError(f"ema_decay must be in [0, 1) (0: no moving average); got {self.ema_decay!r}")
        if self.num_classes:
            raise ConfigError("the hvae model is not conditional; leave num_classes at 0 (drop --conditional)")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Each layer's size (dimensions or channels), top first."""
        return self.latent_sizes or (self.latent_dim,) * self.latent_layers


def plain_config(config: ModelConfig, **changes) -> ModelConfig:
    """The ``ModelConfig`` part of a family config, with ``changes`` (for the library's own networks)."""
    shared = {f.name: getattr(config, f.name) for f in fields(ModelConfig)}
    return ModelConfig(**{**shared, "family": "vae", **changes})


def clamped_gaussian(mu: Tensor, log_var: Tensor, lo: float, hi: float) -> DiagonalGaussian:
    """N(mu, exp(log_var)) in float32 with the log-variance clamped to [lo, hi]: the one clamp of every
    prior and posterior variance of the hierarchy."""
    return DiagonalGaussian(mu.float(), log_var.float().clamp(lo, hi))


def per_layer(value: Temperature, n_layers: int, name: str = "temperature") -> list[float]:
    """A temperature (or any per-layer number) as one value per layer, top first."""
    if isinstance(value, (int, float)):
        values = [float(value)] * n_layers
    else:
        values = [float(v) for v in value]
    if len(values) != n_layers or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"{name} must be one number >= 0 or {n_layers} of them (one per latent layer, top first); "
                          f"got {value!r}")
    return values


# --- networks ---------------------------------------------------------------------------------------


def _projection(layer: nn.Module, fan_in: int) -> nn.Module:
    """A layer that adds z into the top-down state, initialised so that the state has z's scale: each weight
    from N(0, 1 / fan_in), no bias. (PyTorch's default initialisation would shrink z's signal by ~3 at each
    of the layers it passes to reach the decoder, and the top layers would start, and stay, collapsed.)"""
    with torch.no_grad():
        layer.weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
        layer.bias.zero_()
    return layer


def _scale_last_(module: nn.Module, factor: float) -> None:
    """Shrink the last weight of a residual branch so that a new cell starts close to the identity."""
    last = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        if last.bias is not None:
            last.bias.zero_()


class MLPLayer(nn.Module):
    """One latent layer of the MLP hierarchy: its prior head, posterior head and residual cell."""

    def __init__(self, index: int, n_layers: int, width: int, z_dim: int, activation: str):
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.top = index == 0
        if self.top:  # q(z_0 | x) reads the top bottom-up feature alone: the VAE's encoder heads
            self.q_mu, self.q_log_var = nn.Linear(width, z_dim), nn.Linear(width, z_dim)
        else:
            self.prior = nn.Sequential(act(), nn.Linear(width, 2 * z_dim))
            self.q = nn.Sequential(nn.Linear(2 * width, width), act(), nn.Linear(width, 2 * z_dim))
            _scale_last_(self.q, 0.1)
        self.cell = None
        if index < n_layers - 1:  # the bottom layer's z goes to the decoder directly
            self.z_proj = _projection(nn.Linear(z_dim, width), z_dim)
            self.cell = nn.Sequential(nn.Linear(width, width), act(), nn.Linear(width, width))
            _scale_last_(self.cell, 0.1)

    def prior_params(self, s: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.prior(s).chunk(2, -1)  # (R, 2Z) -> (R, Z) twice
        return mu, log_var

    def posterior_delta(self, s: Tensor | None, d: Tensor) -> tuple[Tensor, Tensor]:
        if self.top:
            return self.q_mu(d), self.q_log_var(d)
        return self.q(torch.cat([s, d.to(s.dtype)], -1)).chunk(2, -1)

    def step(self, s: Tensor | None, z: Tensor) -> Tensor | None:
        """The state after z: s + W z, then a residual block (the bottom layer has none)."""
        if self.cell is None:
            return s
        s = self.z_proj(z) if s is None else s + self.z_proj(z)
        return s + self.cell(s)


class MLPBottomUp(nn.Module):
    """x -> the bottom layer's feature (the VAE's encoder trunk), then a residual block per layer above."""

    def __init__(self, cfg: ModelConfig, n_layers: int):
        super().__init__()
        sizes = [cfg.data_dim, *cfg.hidden]
        self.trunk = mlp(sizes, cfg.activation)
        act = _ACTIVATIONS[cfg.activation]
        width = sizes[-1]
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), act(), nn.Linear(width, width))
                                    for _ in range(n_layers - 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Features (B, H) per layer, top first."""
        d = run_mlp(self.trunk, x.flatten(1))  # (B, C*H*W) -> (B, H)
        feats = [d]
        for block in self.blocks:
            d = d + block(d)
            feats.append(d)
        return feats[::-1]


class ResBlock(nn.Module):
    """x + conv3x3(act(conv3x3(act(x)))) at one resolution."""

    def __init__(self, c_in: int, c_out: int, activation: str):
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.body = nn.Sequential(act(), nn.Conv2d(c_in, c_out, 3, padding=1), act(), nn.Conv2d(c_out, c_out, 3, padding=1))
        _scale_last_(self.body, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def conv_levels(n_layers: int, n_levels: int) -> list[int]:
    """The resolution level (1: the finest below the image, n_levels: the coarsest) of each latent layer, top
    first: the layers split as evenly as they go, the top ones (and any remainder) at the coarsest levels."""
    counts = [n_layers // n_levels + (1 if j < n_layers % n_levels else 0) for j in range(n_levels)]  # coarsest first
    return [n_levels - j for j, c in enumerate(counts) for _ in range(c)]


class ConvLayer(nn.Module):
    """One latent layer of the convolutional hierarchy (a feature map of ``z_channels`` at its resolution)."""

    def __init__(self, index: int, channels: int, z_channels: int, activation: str):
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.top = index == 0
        if self.top:
            self.q_head = nn.Conv2d(channels, 2 * z_channels, 3, padding=1)
        else:
            self.prior = nn.Sequential(act(), nn.Conv2d(channels, 2 * z_channels, 1))
            self.q = nn.Sequential(nn.Conv2d(2 * channels, channels, 3, padding=1), act(),
                                   nn.Conv2d(channels, 2 * z_channels, 1))
            _scale_last_(self.q, 0.1)
        self.z_proj = _projection(nn.Conv2d(z_channels, channels, 1), z_channels)
        self.cell = ResBlock(channels, channels, activation)
        self.channels = channels

    def prior_params(self, s: Tensor) -> tuple[Tensor, Tensor]:
        return self.prior(s).chunk(2, 1)

    def posterior_delta(self, s: Tensor | None, d: Tensor) -> tuple[Tensor, Tensor]:
        if self.top:
            return self.q_head(d).chunk(2, 1)
        return self.q(torch.cat([s, d.to(s.dtype)], 1)).chunk(2, 1)

    def step(self, s: Tensor | None, z: Tensor) -> Tensor:
        """The state after z: s + W z (a 1x1 convolution), then a residual block."""
        s = self.z_proj(z) if s is None else s + self.z_proj(z)
        return s + self.cell(s)


class ConvBottomUp(nn.Module):
    """x (B, C, H, W) -> a stride-2 convolution per resolution, then one residual block per latent layer there."""

    def __init__(self, cfg: ModelConfig, levels: list[int]):
        super().__init__()
        chans = cfg.conv_channels
        self.input_shape = cfg.input_shape
        self.downs = nn.ModuleList()
        c_in = cfg.input_shape[0]
        for c in chans:
            self.downs.append(nn.Conv2d(c_in, c, 3, stride=2, padding=1))
            c_in = c
        self.levels = levels
        self.blocks = nn.ModuleList(ResBlock(chans[r - 1], chans[r - 1], cfg.activation) for r in levels)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Features (B, c_r, h_r, w_r) per layer, top first."""
        h = x.reshape(-1, *self.input_shape)
        feats: dict[int, Tensor] = {}
        order = sorted(range(len(self.levels)), key=lambda i: (self.levels[i], -i))  # finest first, bottom first
        by_level: dict[int, list[int]] = {}
        for i in order:
            by_level.setdefault(self.levels[i], []).append(i)
        for r, down in enumerate(self.downs, start=1):
            h = down(h)
            for i in by_level.get(r, []):
                h = h + self.blocks[i](h)
                feats[i] = h
        return [feats[i] for i in range(len(self.levels))]


class ConvHead(nn.Module):
    """The last top-down state (R, c_1, h_1, w_1) -> upsampled to (H, W) -> the likelihood's parameters."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.conv_channels[0]
        act = _ACTIVATIONS[cfg.activation]
        self.cfg = cfg
        self.body = nn.Sequential(act(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1), act())
        self.out = nn.Conv2d(c, cfg.input_shape[0] * _params_per_pixel(cfg), 3, padding=1)

    def forward(self, s: Tensor, lead: tuple[int, ...]):
        channels, height, width = self.cfg.input_shape
        params = self.out(self.body(s)[:, :, :height, :width])  # (R, P*C, H, W)
        params = params.reshape(*lead, -1, channels, height, width)  # (..., P, C, H, W)
        if params.shape[-4] == 1:
            params = params[..., 0, :, :, :]
        return as_likelihood(self.cfg, params)


# --- the path through the hierarchy -----------------------------------------------------------------


@dataclass
class Path:
    """One top-down pass over rows R (= samples x images): per layer (top first) the prior, the posterior
    (None without x) and z (R, size), then p(x|z) with batch shape ``lead``."""

    priors: list[DiagonalGaussian]
    posteriors: list[DiagonalGaussian | None]
    z: list[Tensor]
    likelihood: object

    def code(self, lead: tuple[int, ...]) -> Tensor:
        return torch.cat(self.z, -1).view(*lead, -1)

    def log_q(self, lead) -> Tensor:
        return sum(q.log_prob(z) for q, z in zip(self.posteriors, self.z)).view(lead)

    def log_p(self, lead) -> Tensor:
        return sum(p.log_prob(z) for p, z in zip(self.priors, self.z)).view(lead)

    def kl_per_layer(self, lead) -> Tensor:
        """KL(q(z_i | x, z_<i) || p(z_i | z_<i)) in closed form at the path's z_<i: (..., L)."""
        kls = [_gaussian_kl(q, p) for q, p in zip(self.posteriors, self.priors)]
        return torch.stack(kls, -1).view(*lead, len(kls))


def _gaussian_kl(q: DiagonalGaussian, p: DiagonalGaussian) -> Tensor:
    """KL(N(mq, vq) || N(mp, vp)) summed over the last axis, float32."""
    return 0.5 * (p.log_var - q.log_var + (q.log_var.exp() + (q.mu - p.mu) ** 2) * torch.exp(-p.log_var) - 1).sum(-1)


# A layer's choice of z: (layer index, posterior or None, prior, noise drawer) -> z (R, size).
Chooser = Callable[[int, DiagonalGaussian | None, DiagonalGaussian, Callable[[], Tensor]], Tensor]


class HierarchicalPosterior:
    """q(z | x) = prod_i q(z_i | x, z_<i) over the code [z_0, ..., z_{L-1}] (B, Z): the bottom-up features of
    the batch, with the top-down pass run when z is drawn or scored."""

    event_ndim = 1

    def __init__(self, model: "HVAE", feats: list[Tensor]):
        self.model, self.feats = model, feats
        self._mean_path: Path | None = None

    @property
    def batch(self) -> int:
        return self.feats[0].shape[0]

    def _means(self) -> Path:
        if self._mean_path is None:
            self._mean_path = self.model.path(self.feats, None, lambda i, q, p, eps: q.mu)
        return self._mean_path

    @property
    def mean(self) -> Tensor:
        """The code of the path of means (B, Z): each z_i the posterior mean given the means above."""
        return self._means().code((self.batch,))

    @property
    def std(self) -> Tensor:
        """The posterior standard deviations along the path of means (B, Z)."""
        return torch.cat([q.std for q in self._means().posteriors], -1)

    def sample_path(self, n: int | None, generator=None) -> tuple[Path, tuple[int, ...]]:
        """One pass drawing every z_i ~ q(z_i | x, z_<i): the path and its batch shape ((n, B) or (B,))."""
        lead = (self.batch,) if n is None else (n, self.batch)
        return self.model.path(self.feats, n, lambda i, q, p, eps: q.mu + q.std * eps(), generator), lead

    def rsample_with_log_prob(self, n: int | None = None, generator=None) -> tuple[Tensor, Tensor]:
        path, lead = self.sample_path(n, generator)
        return path.code(lead), path.log_q(lead)

    def rsample(self, n: int | None = None, generator=None) -> Tensor:
        return self.rsample_with_log_prob(n, generator)[0]

    def log_prob(self, z: Tensor) -> Tensor:
        lead = tuple(z.shape[:-1])
        n = None if len(lead) == 1 else math.prod(lead[:-1])
        path = self.model.path(self.feats, n, _given(self.model, z.reshape(-1, z.shape[-1])))
        return path.log_q(lead)


class HierarchicalPrior:
    """p(z) = prod_i p(z_i | z_<i) over the code [z_0, ..., z_{L-1}], z_0 ~ N(0, I): a view of the model's
    top-down networks (no parameters of its own)."""

    event_ndim = 1

    def __init__(self, model: "HVAE"):
        self.model = model

    def log_prob(self, z: Tensor) -> Tensor:
        lead = tuple(z.shape[:-1])
        rows = z.reshape(-1, z.shape[-1])
        return self.model.path(None, None, _given(self.model, rows), rows=rows.shape[0], lead=lead).log_p(lead)

    def sample(self, n: int, generator=None, device=None, dtype=None, temperature: Temperature = 1.0) -> Tensor:
        """n ancestral draws (n, Z), each layer at its temperature: z_i = mu_p + T_i sigma_p eps."""
        temps = per_layer(temperature, self.model.n_layers)
        path = self.model.path(None, n, lambda i, q, p, eps: p.mu + temps[i] * p.std * eps(), generator, rows=n)
        z = path.code((n,))
        return z.to(device=device or z.device, dtype=dtype or z.dtype)


def _given(model: "HVAE", z: Tensor) -> Chooser:
    """The chooser that takes each layer's z from the code z (R, Z)."""
    parts = z.split(model.layer_dims, -1)
    return lambda i, q, p, eps: parts[i].float()


# --- the model ---------------------------------------------------------------------------------------


class HVAE(LatentVariableModel):
    """The top-down hierarchy (see the module docstring)."""

    def __init__(self, config: HVAEConfig, encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        if not isinstance(config, HVAEConfig):
            raise ConfigError("the hvae model needs an HVAEConfig (model family 'hvae')")
        if encoder is not None or decoder is not None:
            raise ConfigError("the hvae model builds its own networks; it takes no encoder or decoder of yours")
        sizes = config.sizes
        self.n_layers = len(sizes)
        if config.architecture == "mlp":
            width = config.hidden[-1]
            bottom_up = MLPBottomUp(config, self.n_layers)
            head_in = sizes[-1] + (width if self.n_layers > 1 else 0)
            head = MLPDecoder(plain_config(config, latent_dim=head_in))
            layers = [MLPLayer(i, self.n_layers, width, z, config.activation) for i, z in enumerate(sizes)]
            shapes = [(z,) for z in sizes]
            ups: list[nn.Module] = []
        else:
            n_levels = len(config.conv_channels)
            self.levels = conv_levels(self.n_layers, n_levels)
            res = conv_sizes(config)
            bottom_up = ConvBottomUp(config, self.levels)
            head = ConvHead(config)
            layers = [ConvLayer(i, config.conv_channels[r - 1], z, config.activation)
                      for i, (z, r) in enumerate(zip(sizes, self.levels))]
            shapes = [(z, *res[r]) for z, r in zip(sizes, self.levels)]
            act = _ACTIVATIONS[config.activation]
            ups = [nn.Sequential(nn.ConvTranspose2d(config.conv_channels[r], config.conv_channels[r - 1], 4, stride=2,
                                                    padding=1), act()) for r in range(1, n_levels)]  # level r+1 -> r
        super().__init__(config, heads=("mu",), encoder=bottom_up, decoder=head)
        self.layers = nn.ModuleList(layers)
        self.ups = nn.ModuleList(ups)
        self.layer_shapes = shapes
        self.layer_dims = [math.prod(s) for s in shapes]
        self.prior = HierarchicalPrior(self)
        if config.init_std is not None:
            init_normal_(self, config.init_std)
        self.ema: WeightAverage | None = WeightAverage(self) if config.ema_decay > 0 else None

    # -- what it is --------------------------------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(has_prior=True, has_posterior=True, conditional=False,
                            objectives=("hierarchical_elbo", "elbo", "iwae"), latent_shape=(sum(self.layer_dims),),
                            code_name="posterior means of every layer, top first")

    @property
    def latent_dim(self) -> int:
        return sum(self.layer_dims)

    @property
    def latent_layer_sizes(self) -> list[int]:
        """How many code dimensions each layer has, top first (the code is their concatenation)."""
        return list(self.layer_dims)

    # -- the pass -----------------------------------------------------------------------------------------

    def path(self, feats: list[Tensor] | None, n: int | None, choose: Chooser, generator=None,
             rows: int | None = None, lead: tuple[int, ...] | None = None) -> Path:
        """The top-down pass: layer by layer (top first) the prior from the state, the posterior from the state
        and the layer's bottom-up feature (``feats``, for a batch of B; None: the prior alone), z from
        ``choose``, the state updated by the layer's cell; then p(x|z). ``n`` samples per image (None: one, no
        sample axis); without ``feats``, ``rows`` draws (or the rows of the chosen z), whose likelihood has the
        batch shape ``lead`` (default (rows,))."""
        cfg = self.config
        b = feats[0].shape[0] if feats is not None else None
        s = None
        priors, posteriors, zs = [], [], []
        level = None
        for i, layer in enumerate(self.layers):
            if cfg.architecture == "conv":
                level, s = self._to_level(s, level, self.levels[i])
            d = None
            if feats is not None:
                d = feats[i] if n is None else feats[i].unsqueeze(0).expand(n, *feats[i].shape).reshape(-1, *feats[i].shape[1:])
            prior, q = self._layer_distributions(i, layer, s, d, rows)
            noise = self._noise_drawer(i, n, b, rows, generator, prior)
            z = choose(i, q, prior, noise)  # (R, size), float32
            if rows is None:
                rows = z.shape[0]
            priors.append(prior)
            posteriors.append(q)
            zs.append(z)
            s = layer.step(s, self._as_map(i, z))
        if lead is None:
            lead = (rows,) if b is None else ((b,) if n is None else (n, b))
        return Path(priors, posteriors, zs, self._likelihood(s, zs[-1], lead))

    def _as_map(self, i: int, z: Tensor) -> Tensor:
        """z (R, size) as the layer's own shape (R, *shape)."""
        return z.view(z.shape[0], *self.layer_shapes[i])

    def _flat(self, t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], -1)

    def _layer_distributions(self, i, layer, s, d, rows) -> tuple[DiagonalGaussian, DiagonalGaussian | None]:
        cfg = self.config
        lo, hi = cfg.log_var_min, cfg.log_var_max
        if i == 0:
            r = d.shape[0] if d is not None else rows
            ref = d if d is not None else next(self.parameters())
            zeros = torch.zeros(r, self.layer_dims[0], device=ref.device)
            prior = DiagonalGaussian(zeros, zeros)  # N(0, I)
        else:
            mu, log_var = layer.prior_params(s)
            prior = clamped_gaussian(self._flat(mu), self._flat(log_var), lo, hi)
        if d is None:
            return prior, None
        dmu, dlog_var = layer.posterior_delta(s, d)
        q = clamped_gaussian(prior.mu + self._flat(dmu).float(), prior.log_var + self._flat(dlog_var).float(), lo, hi)
        return prior, q

    def _noise_drawer(self, i, n, b, rows, generator, like: DiagonalGaussian) -> Callable[[], Tensor]:
        """eps ~ N(0, I) for layer i, drawn with the batch axis named (sharded noise under torchrun)."""
        dim = self.layer_dims[i]
        device = like.mu.device

        def draw() -> Tensor:
            if b is None:
                shape = (like.mu.shape[0], dim)
            else:
                shape = (b, dim) if n is None else (n, b, dim)
            return standard_normal(shape, generator, device, torch.float32, batch_axis=-2).reshape(-1, dim)

        return draw

    def _to_level(self, s: Tensor | None, level: int | None, target: int) -> tuple[int, Tensor | None]:
        """The conv state moved up to the finer resolution ``target`` (transposed convolutions, cropped)."""
        if s is None or level is None:
            return target, s
        res = conv_sizes(self.config)
        while level > target:
            level -= 1
            h, w = res[level]
            s = self.ups[level - 1](s)[:, :, :h, :w]
        return level, s

    def _likelihood(self, s: Tensor | None, z_bottom: Tensor, lead: tuple[int, ...]):
        if self.config.architecture == "mlp":
            h = z_bottom if s is None else torch.cat([z_bottom, s.to(z_bottom.dtype)], -1)
            return self.decoder(h.view(*lead, -1))
        _, s = self._to_level(s, self.levels[-1], 1)
        return self.decoder(s, lead)

    # -- the model's interface ------------------------------------------------------------------------------

    def encode(self, x: Tensor, y: Tensor | None = None) -> HierarchicalPosterior:
        """q(z|x) over the whole code: the bottom-up pass now, the top-down pass when z is drawn or scored."""
        self.condition(y)
        return HierarchicalPosterior(self, self.encoder(x.reshape(len(x), *self.config.input_shape)))

    def encoder_out(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        return {"mu": self.encode(x, y).mean}

    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.encode(x, y).mean

    def decode(self, z: Tensor, y: Tensor | None = None):
        """p(x|z) for codes z (..., Z): the top-down pass with every layer's z given."""
        self.condition(y)
        rows = z.reshape(-1, z.shape[-1])
        return self.path(None, None, _given(self, rows), rows=rows.shape[0], lead=tuple(z.shape[:-1])).likelihood

    def sample_codes(self, n: int, generator=None, device=None, temperature: Temperature = 1.0) -> Tensor:
        return self.prior.sample(n, generator=generator, device=device or self.device, temperature=temperature)

    @torch.no_grad()
    def sample(self, n: int, generator=None, y=None, temperature: Temperature = 1.0) -> Tensor:
        """Decoded means of n ancestral draws, each layer at its temperature (one number or one per layer, top
        first): T = 0 is the path of prior means, T = 1 the model's own prior."""
        self.condition(None if y is None else y)
        return self.decode(self.sample_codes(n, generator, temperature=temperature)).mean

    @torch.no_grad()
    def reconstruct_keeping(self, x: Tensor, keep: int, generator=None, temperature: Temperature = 1.0) -> Tensor:
        """Decoded means (B, C, H, W) of x's code with its top ``keep`` layers kept (posterior means along the
        path of means) and the layers below drawn from the prior given them, at ``temperature``: what the top
        layers encode. keep = L is the reconstruction, keep = 0 a sample."""
        if not 0 <= keep <= self.n_layers:
            raise ConfigError(f"keep must be between 0 and {self.n_layers} (the latent layers); got {keep}")
        temps = per_layer(temperature, self.n_layers)
        q = self.encode(x)

        def choose(i, qi, p, eps):
            return qi.mu if i < keep else p.mu + temps[i] * p.std * eps()

        return self.path(q.feats, None, choose, generator).likelihood.mean

    @torch.no_grad()
    def resample_below(self, z: Tensor, keep: int = 1, generator=None, temperature: Temperature = 1.0) -> Tensor:
        """Codes (..., Z) with the top ``keep`` layers of z kept and the layers below drawn from the prior given
        them, at ``temperature`` (the explorer's sliders set the top layer; the rest follow)."""
        if not 0 <= keep <= self.n_layers:
            raise ConfigError(f"keep must be between 0 and {self.n_layers} (the latent layers); got {keep}")
        temps = per_layer(temperature, self.n_layers)
        rows = z.reshape(-1, z.shape[-1])
        parts = rows.split(self.layer_dims, -1)

        def choose(i, q, p, eps):
            return parts[i].float() if i < keep else p.mu + temps[i] * p.std * eps()

        return self.path(None, None, choose, generator, rows=rows.shape[0]).code((rows.shape[0],)).view(z.shape)

    def kl_per_layer(self, x: Tensor, y: Tensor | None = None, generator=None) -> Tensor:
        """KL(q(z_i | x, z_<i) || p(z_i | z_<i)) per image and layer (B, L), in closed form at one draw of
        z ~ q(z|x); their sum is the ELBO's KL term, their mean over draws each layer's share of it."""
        path, lead = self.encode(x, y).sample_path(None, generator)
        return path.kl_per_layer(lead)

    def importance_log_weights(self, x: Tensor, q: HierarchicalPosterior, samples: int, generator,
                               y: Tensor | None = None) -> Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x) for ``samples`` draws of the hierarchy per image, from one
        top-down pass: (b, samples)."""
        path, lead = q.sample_path(samples, generator)
        return (path.likelihood.log_prob(as_images(self, x)) + path.log_p(lead) - path.log_q(lead)).t()

    # -- the moving average of the weights --------------------------------------------------------------------

    def train(self, mode: bool = True) -> "HVAE":
        super().train(mode)
        if getattr(self, "ema", None) is not None:
            self.ema.use(self, averaged=not mode)
        return self

    def after_step(self, x, y, generator, skipped: Tensor) -> dict[str, Tensor]:
        if self.ema is not None:
            self.ema.update(self, skipped, self.config.ema_decay)
        return {}


class WeightAverage(nn.Module):
    """An exponential moving average of a model's parameters, as buffers (saved with the model), and a flag
    saying whether the model's parameters hold the average now (they do in eval mode)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = [n for n, _ in model.named_parameters()]
        for n, p in model.named_parameters():
            self.register_buffer(n.replace(".", "__"), p.detach().clone())
        self.register_buffer("swapped", torch.zeros((), dtype=torch.bool))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def _pairs(self, model: nn.Module):
        params = dict(model.named_parameters())
        return [(params[n], getattr(self, n.replace(".", "__"))) for n in self.names]

    @torch.no_grad()
    def use(self, model: nn.Module, averaged: bool) -> None:
        """Put the average (``averaged``) or the trained weights into the model's parameters."""
        if bool(self.swapped) == averaged:
            return
        for p, avg in self._pairs(model):
            tmp = p.detach().clone()
            p.copy_(avg)
            avg.copy_(tmp)
        self.swapped.fill_(averaged)

    @torch.no_grad()
    def update(self, model: nn.Module, skipped: Tensor, decay: float) -> None:
        """avg <- avg + (1 - decay_t) (p - avg) after a step that was not skipped; decay_t = min(decay,
        (1 + t) / (10 + t)) so that the average follows the first steps closely."""
        steps = self.steps + (~skipped).long()
        t = steps.double()
        decay_t = torch.clamp((1 + t) / (10 + t), max=decay).float()
        weight = torch.where(skipped, torch.zeros_like(decay_t), 1 - decay_t)
        pairs = self._pairs(model)
        if weight.device.type == "cpu":  # reading it costs nothing here: one fused update
            torch._foreach_lerp_([a for _, a in pairs], [p.detach() for p, _ in pairs], weight.item())
        else:  # stays on the device
            for p, a in pairs:
                a.lerp_(p.detach(), weight)
        self.steps.copy_(steps)


# --- the objective -------------------------------------------------------------------------------------


def balance_coefficients(kl: Tensor, dims: Sequence[int]) -> Tensor:
    """NVAE's KL balancing coefficients (L,) from per-example per-layer KLs (B, L): proportional to each layer's
    batch-mean KL per latent dimension (plus 0.01), with mean 1; no gradient flows through them."""
    alpha = torch.tensor(dims, dtype=kl.dtype, device=kl.device)
    alpha = alpha / alpha.sum()
    c = kl.detach().abs().mean(0) + 0.01  # (L,)
    c = c / alpha * c.sum()
    return c / c.mean()


def hierarchical_elbo(model: HVAE, x: Tensor, generator=None, beta=1.0, reduction: str = "mean",
                      y: Tensor | None = None, x_in: Tensor | None = None, **_: object) -> dict[str, Tensor]:
    """The ELBO from one top-down pass, with the analytic KL of each layer at the sampled path:
    elbo = E_q[log p(x|z)] - sum_i KL_i (nats per example), terms ``kl_layer_i`` per layer (top first).

    The loss weights the KL by ``beta`` (the trainer's warm-up, on every layer); while beta < 1 and
    ``kl_balance`` is on, each layer's KL is reweighted by ``balance_coefficients`` (NVAE)."""
    q = model.encode(encoder_input(model, x, x_in), y)
    path, lead = q.sample_path(None, generator)
    reconstruction = path.likelihood.log_prob(as_images(model, x))  # (B,)
    kls = path.kl_per_layer(lead)  # (B, L)
    kl = kls.sum(-1)
    weights = torch.ones(kls.shape[-1], device=kls.device)
    if model.config.kl_balance:
        warming = torch.as_tensor(beta, device=kls.device) < 1
        weights = torch.where(warming, balance_coefficients(kls, model.layer_dims), weights)
    loss = -reconstruction.mean() + beta * (kls.mean(0) * weights).sum()
    terms = {"loss": loss, "elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
    terms.update({f"kl_layer_{i}": kls[:, i] for i in range(kls.shape[-1])})
    return reduce_terms(terms, reduction)


OBJECTIVES["hierarchical_elbo"] = hierarchical_elbo  # the family's default objective, by the name it declares

FAMILY = register(Family("hvae", build=HVAE, config=HVAEConfig,
                         summary="top-down hierarchical VAE: L stochastic layers with shared top-down state "
                                 "(LVAE/VDVAE/NVAE); MLP or convolutional residual cells"))
