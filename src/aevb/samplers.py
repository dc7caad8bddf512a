"""Post-hoc samplers: a density fitted on a trained model's codes, to draw new codes from and decode.

    aevb fit-prior runs/mnist-ae --sampler gmm --components 10
    aevb sample runs/mnist-ae --sampler gmm --temperature 0.8

    run = aevb.load("runs/mnist-ae")
    images = run.sample(64, sampler="gmm", seed=0)            # (64, C, H, W) decoded means

The codes are those of the run's training split: by default ``model.embed``, the deterministic code (a
VAE's posterior means E_q[z|x], an AE's codes); ``codes="sample"`` draws one z ~ q(z|x) per image instead
(models with a posterior), a draw from the aggregate posterior q(z) = E_x q(z|x) itself. Any model with a
code can then generate: an AE, which has no prior, becomes a generative model (Ghosh et al. 2020, "From
variational to deterministic autoencoders"), and a VAE whose aggregate posterior does not match its prior
gets better samples (Dai & Wipf 2019, "Diagnosing and enhancing VAE models").

Kinds (``SAMPLERS``), each a class with ``fit(codes, seed, **options)``, ``sample(n, generator,
temperature)`` -> codes (n, latent_dim) float32 on the CPU, ``state()`` -> (tensors, JSON-able dict) and
``from_state(tensors, meta)``:

- ``gmm``: a Gaussian mixture with full covariances (scikit-learn's ``GaussianMixture``, EM, seeded);
  its weights, means and covariances are stored and sampled in torch. Temperature T scales every
  component's standard deviation (T = 0 gives the component means).
- ``maf``: a masked autoregressive flow (Papamakarios et al. 2017) of MADE layers (Germain et al. 2015)
  with the order reversed between layers, fitted by maximum likelihood on the standardized codes; sampling
  inverts it (one pass per dimension). T scales the base Gaussian's standard deviation.
- ``two-stage``: the second-stage VAE of Dai & Wipf (2019): a VAE on the (standardized) codes with as many
  latent dimensions as the code, MLP encoder and decoder whose last layer also reads their input (Dai & Wipf's),
  and a Gaussian likelihood N(g(u), gamma I) with one scalar variance gamma (set to its optimum at each step,
  ``SecondStageVAE``); sampling draws u ~ N(0, T^2 I), then z ~ N(g(u), T^2 gamma I), as Dai & Wipf's code does.

Both networks need many codes: on 10,000 MNIST codes a MAF overfits (its held-out loss a nat above its
training loss) and samples worse than on all 50,000 (``docs/samplers.md``); fit them on all training codes.

The MAF and two-stage fits hold out a tenth of the codes and keep the weights of the epoch with the best
held-out loss (reported in ``fit_stats``). Nothing is pickled: the run directory stores a safetensors file
and a JSON file per sampler (``aevb.checkpoint.save_sampler``).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CODE_KINDS = ("mean", "sample")  # what the codes are: model.embed, or one z ~ q(z|x) per image
WARMUP = 0.2  # two-stage: the KL term's weight rises from 0 to 1 over this share of the steps
HOLDOUT = 0.1  # the share of codes a MAF or two-stage fit keeps aside to choose its best epoch


class SamplerError(ValueError):
    """A sampler that cannot be fitted or used as asked: one line naming the setting."""


def _standardize(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension shift (mean) and scale (std, at least 1e-6) of codes (N, D), each (D,)."""
    shift = codes.mean(0)
    scale = codes.std(0, unbiased=False).clamp_min(1e-6) if len(codes) > 1 else torch.ones_like(shift)
    return shift, scale


def _check_temperature(temperature: float | list[float]) -> None:
    """A temperature is a finite number >= 0 (a list of them: one per latent layer of a hierarchy)."""
    for t in temperature if isinstance(temperature, (list, tuple)) else [temperature]:
        if not (math.isfinite(t) and t >= 0):
            raise SamplerError(f"temperature must be a finite number >= 0; got {t}")


def _split_holdout(x: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(train, held-out) rows of x, the held-out a random tenth (at least 1 row; the same rows when x is tiny)."""
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, int(len(x) * HOLDOUT))
    if len(x) - n_val < 1:
        return x, x
    return x[perm[n_val:]], x[perm[:n_val]]


def _train(net: nn.Module, loss_fn, x: Tensor, *, epochs: int, batch_size: int, lr: float,
           g: torch.Generator) -> dict[str, float]:
    """Adam with a cosine-decayed rate on loss_fn(net, batch, progress) (a mean over the batch; progress: the
    share of the steps done, 1 on the held-out tenth of x, which chooses the epoch whose weights are kept).
    Returns the last epoch's train loss and the best held-out loss."""
    train_x, val_x = _split_holdout(x, g)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train_x) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    best, best_state, best_epoch, last, step = math.inf, None, 0, math.nan, 0
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(train_x), generator=g)
        total = 0.0
        for start in range(0, len(train_x), batch_size):
            batch = train_x[perm[start : start + batch_size]]
            loss = loss_fn(net, batch, step / steps)
            step += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 100.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(batch)
        last = total / len(train_x)
        net.eval()
        with torch.no_grad():
            val = float(loss_fn(net, val_x, 1.0))
        if val < best:
            best, best_epoch = val, epoch + 1
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return {"train_loss": last, "heldout_loss": best, "best_epoch": best_epoch, "epochs": epochs}


# --- Gaussian mixture ----------------------------------------------------------------------


class GMMSampler:
    """A mixture of K full-covariance Gaussians: weights (K,), means (K, D), covariances (K, D, D), float64."""

    kind = "gmm"
    DEFAULTS = {"components": 10, "max_iter": 200, "reg_covar": 1e-6}

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor, options: dict | None = None,
                 fit_stats: dict | None = None):
        self.weights = weights.double()
        self.means = means.double()
        self.covariances = covariances.double()
        self.scale_tril = torch.linalg.cholesky(self.covariances)  # (K, D, D)
        self.options = dict(options or {})
        self.fit_stats = dict(fit_stats or {})

    @classmethod
    def fit(cls, codes: Tensor, seed: int = 0, components: int = 10, max_iter: int = 200,
            reg_covar: float = 1e-6) -> "GMMSampler":
        """EM on codes (N, D) with ``components`` full-covariance Gaussians (k-means initialisation, ``seed``)."""
        from sklearn.mixture import GaussianMixture

        if components < 1:
            raise SamplerError(f"components must be at least 1; got {components}")
        if components > len(codes):
            raise SamplerError(f"components {components} is more than the {len(codes)} codes to fit; lower it")
        x = codes.double().cpu().numpy()
        gm = GaussianMixture(n_components=components, covariance_type="full", max_iter=max_iter,
                             reg_covar=reg_covar, random_state=seed).fit(x)
        stats = {"mean_log_likelihood": float(gm.score(x)), "converged": bool(gm.converged_), "iterations": int(gm.n_iter_)}
        return cls(torch.from_numpy(gm.weights_), torch.from_numpy(gm.means_), torch.from_numpy(gm.covariances_),
                   {"components": components, "max_iter": max_iter, "reg_covar": reg_covar}, stats)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """n codes (n, D) float32: a component by its weight, then its mean + T * L eps (L L^T its covariance)."""
        _check_temperature(temperature)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(n, self.dim, 1, generator=generator, dtype=torch.float64)
        z = self.means[k] + temperature * (self.scale_tril[k] @ eps).squeeze(-1)  # (n, D)
        return z.float()

    def log_prob(self, z: Tensor) -> Tensor:
        """log of the mixture's density at z (N, D): (N,), float64."""
        comp = torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril)
        return torch.logsumexp(comp.log_prob(z.double()[:, None, :]) + self.weights.log(), dim=1)

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return ({"weights": self.weights, "means": self.means, "covariances": self.covariances},
                {"dim": self.dim, "options": self.options, "fit_stats": self.fit_stats})

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> "GMMSampler":
        return cls(tensors["weights"], tensors["means"], tensors["covariances"], meta.get("options"),
                   meta.get("fit_stats"))


# --- masked autoregressive flow -------------------------------------------------------------


def made_masks(dim: int, hidden: tuple[int, ...], reverse: bool) -> list[Tensor]:
    """The 0/1 masks (n_out, n_in) of a MADE over ``dim`` inputs with ``hidden`` layers whose two outputs per
    input (shift, log-scale) depend only on the inputs before it in the order (1..D, or D..1 if ``reverse``)."""
    degree_in = torch.arange(dim, 0, -1) if reverse else torch.arange(1, dim + 1)  # (D,) position in the order
    degrees = [degree_in]
    for h in hidden:
        degrees.append(torch.arange(h) % max(1, dim - 1) + 1)  # (H,) in 1..D-1: a unit sees positions <= its degree
    masks = [(d_out[:, None] >= d_in[None, :]).float() for d_in, d_out in zip(degrees[:-1], degrees[1:])]
    masks.append((degree_in[:, None] > degrees[-1][None, :]).float().repeat(2, 1))  # (2D, H): shift, then log-scale
    return masks


class MADE(nn.Module):
    """x (N, D) -> shift and log-scale (N, D) each, output i reading only the inputs before i in the order."""

    LOG_SCALE_BOUND = 5.0  # |log-scale| < 5 through a soft clamp: a step scales by at most e^5

    def __init__(self, dim: int, hidden: tuple[int, ...], reverse: bool):
        super().__init__()
        from .flows import MaskedLinear

        masks = made_masks(dim, hidden, reverse)
        sizes = [dim, *hidden, 2 * dim]
        self.layers = nn.ModuleList(MaskedLinear(a, b, m) for a, b, m in zip(sizes[:-1], sizes[1:], masks))
        nn.init.zeros_(self.layers[-1].weight)  # the flow starts as the identity
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        shift, raw = self.layers[-1](x).chunk(2, -1)
        return shift, self.LOG_SCALE_BOUND * torch.tanh(raw / self.LOG_SCALE_BOUND)


class MAF(nn.Module):
    """x = f(u), u ~ N(0, I): each layer x = u * exp(s(x_<i)) + m(x_<i); the density pass (x -> u) is one MADE
    call per layer, sampling (u -> x) D calls per layer."""

    def __init__(self, dim: int, layers: int, hidden: tuple[int, ...]):
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(MADE(dim, hidden, reverse=k % 2 == 1) for k in range(layers))

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) (N,) for x (N, D): log N(u; 0, I) + sum of log |du/dx| over the layers."""
        logdet = torch.zeros(len(x), dtype=x.dtype)
        for made in self.layers:
            shift, log_scale = made(x)
            x = (x - shift) * torch.exp(-log_scale)
            logdet = logdet - log_scale.sum(-1)
        return -0.5 * (x * x).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi) + logdet

    @torch.no_grad()
    def inverse(self, u: Tensor) -> Tensor:
        """x (N, D) for base noise u (N, D): the layers in reverse, each fixing one more dimension per pass."""
        for made in reversed(self.layers):
            x = torch.zeros_like(u)
            for _ in range(self.dim):
                shift, log_scale = made(x)
                x = u * torch.exp(log_scale) + shift
            u = x
        return u


class MAFSampler:
    """A MAF on the standardized codes (z - shift) / scale."""

    kind = "maf"
    DEFAULTS = {"layers": 5, "hidden": 128, "epochs": 50, "batch_size": 256, "lr": 1e-3}

    def __init__(self, flow: MAF, shift: Tensor, scale: Tensor, options: dict, fit_stats: dict | None = None):
        self.flow, self.shift, self.scale = flow.eval(), shift.float(), scale.float()
        self.options, self.fit_stats = dict(options), dict(fit_stats or {})

    @staticmethod
    def _build(dim: int, options: dict) -> MAF:
        return MAF(dim, options["layers"], (options["hidden"],) * 2)

    @classmethod
    def fit(cls, codes: Tensor, seed: int = 0, layers: int = 5, hidden: int = 128, epochs: int = 50,
            batch_size: int = 256, lr: float = 1e-3) -> "MAFSampler":
        """Maximum likelihood on codes (N, D) for ``epochs`` epochs (Adam, rate ``lr`` decayed by a cosine)."""
        if min(layers, hidden, epochs, batch_size) < 1:
            raise SamplerError("layers, hidden, epochs and batch_size must be at least 1")
        codes = codes.float().cpu()
        shift, scale = _standardize(codes)
        options = {"layers": layers, "hidden": hidden, "epochs": epochs, "batch_size": batch_size, "lr": lr}
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            flow = cls._build(codes.shape[1], options)
        stats = _train(flow, lambda f, x, progress: -f.log_prob(x).mean(), (codes - shift) / scale, epochs=epochs,
                       batch_size=batch_size, lr=lr, g=g)
        # the losses are of the standardized codes; in the codes' own units log p moves by -sum log scale
        stats["heldout_nll_codes"] = stats["heldout_loss"] + float(scale.log().sum())
        return cls(flow, shift, scale, options, stats)

    @property
    def dim(self) -> int:
        return self.flow.dim

    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        _check_temperature(temperature)
        u = temperature * torch.randn(n, self.dim, generator=generator)
        return self.flow.inverse(u) * self.scale + self.shift

    @torch.no_grad()
    def log_prob(self, z: Tensor) -> Tensor:
        """log p(z) (N,) in the codes' own units."""
        return self.flow.log_prob((z.float() - self.shift) / self.scale) - self.scale.log().sum()

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"flow.{k}": v for k, v in self.flow.state_dict().items()}
        tensors.update(shift=self.shift, scale=self.scale)
        return tensors, {"dim": self.dim, "options": self.options, "fit_stats": self.fit_stats}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> "MAFSampler":
        flow = cls._build(meta["dim"], meta["options"])
        flow.load_state_dict({k[len("flow."):]: v for k, v in tensors.items() if k.startswith("flow.")})
        return cls(flow, tensors["shift"], tensors["scale"], meta["options"], meta.get("fit_stats"))


# --- two-stage VAE ---------------------------------------------------------------------------


def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    sizes = [n_in, *hidden]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], n_out))


class SkipMLP(nn.Module):
    """x (N, n_in) -> (N, n_out): ReLU layers of ``hidden`` units, then a linear layer that reads the input
    beside the last hidden layer (Dai & Wipf's second-stage networks: the identity is one linear map away)."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int):
        super().__init__()
        self.body = _mlp(n_in, hidden[:-1], hidden[-1])
        self.out = nn.Linear(n_in + hidden[-1], n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.cat([x, F.relu(self.body(x))], -1))


class SecondStageVAE(nn.Module):
    """Dai & Wipf (2019), section 4: q(u|z) = N(mu(z), diag sigma^2(z)), p(u) = N(0, I), p(z|u) = N(g(u), gamma I)
    with one scalar variance gamma; u has as many dimensions as z.

    Dai & Wipf learn gamma by gradient descent, and it falls toward 0 (the manifold's optimum) only slowly;
    here each step sets gamma to its optimum for the batch, the mean squared error per dimension
    (the calibrated decoder of Rybkin et al. 2021, "Simple and effective VAE training with calibrated
    decoders"): the same fixed point, reached at once. ``gamma`` keeps the last training batch's value."""

    LOG_GAMMA_MIN = -12.0  # gamma -> 0 is the expected optimum on a manifold; this keeps 1/gamma finite

    def __init__(self, dim: int, hidden: tuple[int, ...], skip: bool = False):
        super().__init__()
        self.dim = dim
        net = SkipMLP if skip else _mlp
        self.encoder = net(dim, hidden, 2 * dim)
        self.decoder = net(dim, hidden, dim)
        self.register_buffer("gamma", torch.ones(()))

    def neg_elbo(self, z: Tensor, kl_weight: float = 1.0) -> Tensor:
        """-ELBO per example (N,) in nats: ||z - g(u)||^2 / (2 gamma) + D/2 log(2 pi gamma) + KL(q(u|z) || N(0, I)),
        gamma the batch's mean squared error per dimension (held fixed in the gradient); ``kl_weight`` < 1
        during the warm-up (the KL term at full weight from the start collapses q(u|z) onto the prior)."""
        mu, log_var = self.encoder(z).chunk(2, -1)
        log_var = log_var.clamp(-15.0, 10.0)
        u = mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
        sq = ((z - self.decoder(u)) ** 2).sum(-1)  # (N,)
        log_gamma = (sq.detach().mean() / self.dim).log().clamp_min(self.LOG_GAMMA_MIN)
        if self.training:
            self.gamma.fill_(float(log_gamma.exp()))
        nll = 0.5 * sq * torch.exp(-log_gamma) + 0.5 * self.dim * (math.log(2 * math.pi) + log_gamma)
        kl = 0.5 * (mu * mu + log_var.exp() - 1 - log_var).sum(-1)
        return nll + kl_weight * kl


class TwoStageSampler:
    """A second-stage VAE on the standardized codes (z - shift) / scale.

    Its samples are z = g(u) + sqrt(gamma) eps, u ~ N(0, T^2 I), eps ~ N(0, T^2 I): a draw of p(z|u), as in
    Dai & Wipf's code (``generate``: z_hat + gamma_z * noise, their gamma_z a standard deviation). The decoded
    mean g(u) alone is narrower than the codes by gamma per standardized dimension. A sampler stored without
    the ``decoder_noise`` option (aevb before it) samples g(u), as it did."""

    kind = "two-stage"
    DEFAULTS = {"hidden": 256, "depth": 2, "epochs": 60, "batch_size": 256, "lr": 3e-3, "skip": True,
                "decoder_noise": True}

    def __init__(self, vae: SecondStageVAE, shift: Tensor, scale: Tensor, options: dict, fit_stats: dict | None = None):
        self.vae, self.shift, self.scale = vae.eval(), shift.float(), scale.float()
        self.options, self.fit_stats = dict(options), dict(fit_stats or {})

    @staticmethod
    def _build(dim: int, options: dict) -> SecondStageVAE:
        return SecondStageVAE(dim, (options["hidden"],) * options["depth"], skip=options.get("skip", False))

    @classmethod
    def fit(cls, codes: Tensor, seed: int = 0, hidden: int = 256, depth: int = 2, epochs: int = 60,
            batch_size: int = 256, lr: float = 3e-3, skip: bool = True,
            decoder_noise: bool = True) -> "TwoStageSampler":
        """The second-stage VAE trained on the ELBO of codes (N, D) for ``epochs`` epochs; ``skip``: its networks'
        last layer also reads their input (Dai & Wipf's); ``decoder_noise``: samples draw p(z|u), not its mean."""
        if min(hidden, depth, epochs, batch_size) < 1:
            raise SamplerError("hidden, depth, epochs and batch_size must be at least 1")
        codes = codes.float().cpu()
        shift, scale = _standardize(codes)
        options = {"hidden": hidden, "depth": depth, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                   "skip": bool(skip), "decoder_noise": bool(decoder_noise)}
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the initialisation and the reparameterisation noise of training
            vae = cls._build(codes.shape[1], options)
            stats = _train(vae, lambda v, x, progress: v.neg_elbo(x, min(1.0, progress / WARMUP)).mean(),
                           (codes - shift) / scale, epochs=epochs,
                           batch_size=batch_size, lr=lr, g=g)
        stats["gamma"] = float(vae.gamma)
        return cls(vae, shift, scale, options, stats)

    @property
    def dim(self) -> int:
        return self.vae.dim

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        _check_temperature(temperature)
        u = temperature * torch.randn(n, self.dim, generator=generator)
        z = self.vae.decoder(u)
        if self.options.get("decoder_noise", False):
            z = z + temperature * self.vae.gamma.sqrt() * torch.randn(n, self.dim, generator=generator)
        return z * self.scale + self.shift

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
        tensors.update(shift=self.shift, scale=self.scale)
        return tensors, {"dim": self.dim, "options": self.options, "fit_stats": self.fit_stats}

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict[str, Any]) -> "TwoStageSampler":
        vae = cls._build(meta["dim"], meta["options"])
        vae.load_state_dict({k[len("vae."):]: v for k, v in tensors.items() if k.startswith("vae.")})
        return cls(vae, tensors["shift"], tensors["scale"], meta["options"], meta.get("fit_stats"))


SAMPLERS: dict[str, type] = {cls.kind: cls for cls in (GMMSampler, MAFSampler, TwoStageSampler)}


def sampler_class(kind: str) -> type:
    if kind not in SAMPLERS:
        raise SamplerError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[kind]


def fit_sampler(kind: str, codes: Tensor, seed: int = 0, **options: Any):
    """A sampler of ``kind`` fitted on codes (N, D); ``options``: the kind's own (``SAMPLERS[kind].DEFAULTS``)."""
    cls = sampler_class(kind)
    unknown = set(options) - set(cls.DEFAULTS)
    if unknown:
        raise SamplerError(f"the {kind} sampler has no option {', '.join(sorted(unknown))}; it takes "
                           f"{', '.join(cls.DEFAULTS)}")
    if codes.dim() != 2 or len(codes) < 2:
        raise SamplerError(f"codes must be shaped (N, D) with N >= 2; got {tuple(codes.shape)}")
    if not torch.isfinite(codes).all():
        raise SamplerError("some codes are NaN or infinite (the model diverged); no sampler can be fitted")
    return cls.fit(codes, seed=seed, **options)


# --- codes of a model ---------------------------------------------------------------------------


@torch.no_grad()
def encode_codes(model, x: Tensor, y: Tensor | None = None, codes: str = "mean", seed: int = 0,
                 batch_size: int = 1000) -> Tensor:
    """The codes (N, latent_dim) float32 on the CPU of images x (N, ...) (and labels y): ``model.embed`` for
    ``codes="mean"``, one seeded z ~ q(z|x) per image for ``codes="sample"`` (a model with a posterior)."""
    if codes not in CODE_KINDS:
        raise SamplerError(f"codes must be one of {', '.join(CODE_KINDS)}; got {codes!r}")
    if codes == "sample" and not model.capabilities.has_posterior:
        raise SamplerError("codes='sample' draws z ~ q(z|x), and this model has no posterior; use codes='mean'")
    dev = model.device
    g = torch.Generator(device=dev).manual_seed(seed)
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(dev)
        yb = None if y is None else y[start : start + batch_size].to(dev)
        if codes == "mean":
            out.append(model.embed(xb, yb).flatten(1).float().cpu())
        else:  # with two layers the posterior's sample is [z1, z2]: the code is z1
            out.append(model.encode(xb, yb).rsample(generator=g)[..., : model.latent_dim].float().cpu())
    return torch.cat(out)


# --- samplers of a run --------------------------------------------------------------------------


class StaleSamplerWarning(UserWarning):
    """A fitted sampler was fitted on other weights than those loaded (the run trained on, or best/last)."""


def training_codes(run, codes: str = "mean", seed: int = 0, data_dir: str | None = None,
                   max_codes: int | None = None) -> Tensor:
    """The codes (N, latent_dim) of the run's training split (its first ``max_codes`` images), as
    ``encode_codes`` makes them. Under dynamic binarization the model was trained on Bernoulli(pixel) draws,
    so the images are binarized once, with ``seed``, before they are encoded."""
    split = run.dataset(data_dir).train
    if max_codes is not None:
        if max_codes < 2:
            raise SamplerError(f"max_codes must be at least 2; got {max_codes}")
        split = split[:max_codes]
    x = split.x
    if run.config.data.binarize == "dynamic":
        x = (torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < x).to(x.dtype)
    y = split.y if run.config.model.num_classes else None
    if run.config.model.num_classes and y is None:
        raise SamplerError("this conditional model's training split has no labels to encode with")
    return encode_codes(run.model, x, y, codes=codes, seed=seed)


def fit_prior(run, kind: str, seed: int = 0, codes: str = "mean", data_dir: str | None = None,
              max_codes: int | None = None, **options: Any) -> tuple[Any, dict[str, Any]]:
    """Fit a sampler of ``kind`` on the run's training codes and store it in the run directory as
    sampler-KIND.safetensors + .json (``aevb.checkpoint.save_sampler``). Returns (sampler, its record)."""
    import time

    from . import __version__
    from .checkpoint import save_sampler, weights_digest
    from .config import FORMAT_VERSION

    sampler_class(kind)  # an unknown kind fails before the data are read
    z = training_codes(run, codes=codes, seed=seed, data_dir=data_dir, max_codes=max_codes)
    start = time.perf_counter()
    sampler = fit_sampler(kind, z, seed=seed, **options)
    seconds = time.perf_counter() - start
    tensors, meta = sampler.state()
    caps = run.model.capabilities
    meta.update(kind=kind, seed=seed, codes=codes, code_name=caps.code_name if codes == "mean" else "z ~ q(z|x)",
                split="train", n_codes=len(z), latent_shape=list(caps.latent_shape),
                binarized=run.config.data.binarize == "dynamic", weights=run.which,
                weights_sha256=weights_digest(run.dir, run.which), fit_seconds=round(seconds, 3),
                format_version=FORMAT_VERSION, aevb_version=__version__)
    save_sampler(run.dir, kind, tensors, meta)
    return sampler, meta


def load_fitted(run, name: str):
    """The run's fitted sampler NAME, rebuilt from its files; warns (``StaleSamplerWarning``) when it was
    fitted on other weights than the run's loaded ones."""
    import warnings

    from .checkpoint import CheckpointError, load_sampler, weights_digest

    cls = sampler_class(name)
    tensors, meta = load_sampler(run.dir, name)
    if meta.get("kind") != name or meta.get("dim") != run.model.capabilities.latent_dim:
        raise CheckpointError(f"{run.dir}: the {name} sampler's record does not fit this model (kind "
                              f"{meta.get('kind')!r}, {meta.get('dim')} dimensions); fit it again with: "
                              f"aevb fit-prior {run.dir} --sampler {name}")
    if meta.get("weights_sha256") != weights_digest(run.dir, run.which):
        which = "weights" if meta.get("weights") == run.which else f"{meta.get('weights')} weights, not the {run.which}"
        warnings.warn(f"the {name} sampler of {run.dir} was fitted on other {which} than those loaded; fit it "
                      f"again with: aevb fit-prior {run.dir} --sampler {name}", StaleSamplerWarning, stacklevel=3)
    return cls.from_state(tensors, meta)


def draw_codes(run, n: int, sampler: str | None = None, temperature: float = 1.0, seed: int = 0) -> Tensor:
    """n codes (n, *latent_shape) on the model's device, from the prior (``sampler`` None) or the fitted sampler.
    A fitted sampler draws on the CPU from a CPU generator seeded with ``seed`` (the same codes on any device);
    the prior draws as ``model.sample`` does, from a generator on the model's device."""
    from .distributions import StandardNormal

    _check_temperature(temperature)
    model = run.model
    caps = model.capabilities
    if sampler is None or sampler == "prior":
        if not caps.has_prior:
            raise SamplerError(f"this model has no prior to sample from (it was trained without one); fit a "
                               f"sampler on its codes with: aevb fit-prior {run.dir} --sampler gmm")
        g = torch.Generator(device=model.device).manual_seed(seed)
        if "temperature" in inspect.signature(model.sample_codes).parameters:  # it tempers its own prior (per layer)
            return model.sample_codes(n, generator=g, temperature=temperature)
        if isinstance(temperature, (list, tuple)):
            raise SamplerError("one temperature per latent layer applies to a hierarchy (hvae); give one number")
        if temperature != 1.0 and not isinstance(model.prior, StandardNormal):
            raise SamplerError("a temperature other than 1 applies to a N(0, I) prior, a hierarchy's prior or a fitted "
                               "sampler; this model's prior is learned: sample at temperature 1, or fit a sampler")
        return temperature * model.sample_codes(n, generator=g)
    if isinstance(temperature, (list, tuple)):
        raise SamplerError("a fitted sampler takes one temperature; give one number")
    codes = load_fitted(run, sampler).sample(n, torch.Generator().manual_seed(seed), temperature)
    return codes.view(n, *caps.latent_shape).to(model.device)


@torch.no_grad()
def draw_images(run, n: int, sampler: str | None = None, temperature: float = 1.0, seed: int = 0,
                y: int | Tensor | None = None, batch_size: int = 1000) -> Tensor:
    """Decoded means (n, C, H, W) of ``draw_codes``'s codes, ``batch_size`` at a time; a conditional model needs
    ``y``: one class for all n, or n labels."""
    from .conditional import check_labels, label_tensor

    model = run.model
    z = draw_codes(run, n, sampler, temperature, seed)
    if isinstance(y, int):
        y = label_tensor(y, n, model.device)
    if y is not None and model.config.num_classes and not y.is_floating_point():
        check_labels(y, model.config.num_classes, "labels")
    if y is not None and len(y) != n:
        raise SamplerError(f"y must be one label, or n = {n} labels; got {len(y)}")
    out = []
    for start in range(0, n, batch_size):
        yb = None if y is None else y[start : start + batch_size].to(model.device)
        out.append(model.decode(z[start : start + batch_size], yb).mean)
    return torch.cat(out)
