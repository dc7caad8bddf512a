"""Typed configuration: what a model is, what it is trained on, and how.

Every run directory holds these three as ``config.json``; a model is rebuilt from
that file and ``model.safetensors`` alone. Each dataclass validates itself on
construction, so a bad value fails early with a message that names the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2  # bump when config.json or the checkpoint layout changes incompatibly (then migrate in _migrate)

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_fixed", "discretized_logistic", "discretized_logistic_mixture")
ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "linear")
ARCHITECTURES = ("mlp", "conv", "conv64")  # conv64: Locatello et al. 2019's network for 64x64 images
OPTIMIZERS = ("adagrad", "adam", "sgd")
ESTIMATORS = ("analytic", "mc")  # SGVB estimator B (analytic KL) and A (Monte Carlo KL)
BINARIZE = ("none", "dynamic", "static")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp16 (with a gradient scaler) needs CUDA
OBJECTIVES = ("elbo", "iwae", "reconstruction",  # the bound, the IWAE bound, an AE's -log p(x|code)
              "tcvae", "dipvae-i", "dipvae-ii", "capacity", "factorvae")  # disentangling (docs/disentangling-models.md)
TC_ESTIMATORS = ("mws", "mss")  # beta-TCVAE's estimators of log q(z): minibatch-weighted or -stratified sampling
KL_SCHEDULES = ("constant", "linear", "cyclical")
DECODER_MEANS = ("sigmoid", "identity")
CHANNELS = (1, 3)  # grey, RGB
FITS = ("resize", "crop")  # how images of another size are brought to image_size
ALGORITHMS = ("aevb", "wake-sleep")  # SGVB, or the wake-sleep baseline (aevb.wake_sleep)
PRIORS = ("standard", "vamp", "mog")  # N(0, I), VampPrior, mixture of Gaussians (aevb.priors)
FLOWS = ("none", "planar", "iaf")  # q(z|x) a diagonal Gaussian, or pushed through a flow (aevb.flows)
STOCHASTIC_LAYERS = (1, 2)  # one latent layer, or the IWAE paper's two (z1 read by the decoder, z2 above it)
LR_SCHEDULES = ("constant", "warmup", "cosine", "step", "plateau")  # see aevb.lr_schedules
INPUT_NOISES = ("gaussian", "mask", "salt-pepper")  # corruptions of a denoising model's input (aevb.corruption)


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong kind."""


def parse_input_noise(spec: str) -> tuple[str, float]:
    """``"gaussian:SIGMA"``, ``"mask:P"`` or ``"salt-pepper:P"`` as (kind, level); a ConfigError naming
    ``input_noise`` otherwise. SIGMA > 0 is a standard deviation in pixel units; 0 < P < 1 a probability."""
    kind, _, level = str(spec).partition(":")
    try:
        value = float(level)
    except ValueError:
        value = float("nan")
    _check(kind in INPUT_NOISES and value == value,
           f"input_noise must be gaussian:SIGMA, mask:P or salt-pepper:P (e.g. gaussian:0.5); got {spec!r}")
    if kind == "gaussian":
        _check(0 < value < float("inf"), f"input_noise gaussian:SIGMA needs SIGMA > 0; got {spec!r}")
    else:
        _check(0 < value < 1, f"input_noise {kind}:P needs a probability 0 < P < 1; got {spec!r}")
    return kind, value


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, f"{name} must be one of {', '.join(options)}; got {value!r}")


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite real number (False for NaN, +-inf, strings, None)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class ModelConfig:
    """The networks and likelihood.

    ``input_shape`` is (channels, height, width). ``hidden`` lists the widths of the
    encoder's hidden layers; the decoder mirrors them.

    ``architecture="conv"`` puts a convolutional trunk before (encoder) and after
    (decoder) those layers: one 3x3 stride-2 convolution per entry of ``conv_channels``
    (each halves height and width, rounding up), mirrored by 4x4 stride-2 transposed
    convolutions in the decoder, whose output is cropped to exactly (C, H, W).

    ``architecture="conv64"`` is Locatello et al. (2019)'s network for 64x64 images (``aevb.nets``):
    convolutions 32-32-64-64 to 4x4, the dense layers ``hidden`` ((256,) in the paper), mirrored.

    ``likelihood="discretized_logistic"`` is for 8-bit images scaled to [0, 1]: a
    logistic per pixel integrated over its 1/255-wide bin (``distributions.DiscretizedLogistic``),
    so log p(x) is a probability of the pixel values and bits/dim are comparable to the literature;
    ``"discretized_logistic_mixture"`` is a mixture of ``mixture_components`` of them per pixel (PixelCNN++,
    with its colour coefficients for 3 channels; ``distributions.DiscretizedLogisticMixture``). The paper's MNIST model is
    ``hidden=(500,), activation="tanh"``; its Frey Face model ``hidden=(200,)`` with
    ``likelihood="gaussian"`` (sigmoid mean, learned log-variance).
    """

    input_shape: tuple[int, int, int] = (1, 28, 28)
    # The model family (``aevb.models``: "vae", "ae", or one you register).
    family: str = "vae"
    architecture: str = "mlp"
    likelihood: str = "bernoulli"
    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    latent_dim: int = 20
    # Gaussian decoders: the fixed standard deviation of "gaussian_fixed" (MSE up to
    # a constant and a scale) and the clamp range of every log-variance.
    fixed_sigma: float = 1.0
    # Gaussian decoders: "sigmoid" keeps the mean in (0, 1) as the paper's Frey Face
    # decoder does; "identity" for unbounded real-valued data (and the linear-Gaussian model).
    decoder_mean: str = "sigmoid"
    log_var_min: float = -10.0
    log_var_max: float = 10.0
    # "discretized_logistic_mixture": K, the logistics per pixel (PixelCNN++ and NVAE use 10).
    mixture_components: int = 10
    # Standard deviation of the N(0, std^2) weight initialisation (the paper uses
    # 0.01); None keeps PyTorch's default (Kaiming-uniform) initialisation.
    init_std: float | None = None
    # "conv" only: output channels of the encoder's stride-2 convolutions, first to last.
    conv_channels: tuple[int, ...] = (32, 64)
    # A conditional model (Sohn et al. 2015) for K > 0 classes: the one-hot label enters the
    # encoder (beside x) and the decoder (beside z); the prior stays N(0, I). 0 = unconditional.
    num_classes: int = 0
    # Your own networks (``aevb.nets.network_spec``): {"class": "package.module.Class", "args": {...}},
    # rebuilt on load only when the code is trusted; None = the built-in network of ``architecture``.
    encoder: dict[str, Any] | None = None
    decoder: dict[str, Any] | None = None
    # The prior p(z) (of the top layer with two stochastic layers): "standard" N(0, I), "vamp" (Tomczak &
    # Welling 2018: a mixture of the posteriors at prior_components learned pseudo-inputs) or "mog" (a
    # mixture of prior_components Gaussians with learned means and variances, equal weights).
    prior: str = "standard"
    prior_components: int = 500
    # The posterior q(z|x): the diagonal Gaussian alone ("none"), or pushed through flow_steps planar steps
    # (Rezende & Mohamed 2015) or inverse autoregressive steps (Kingma et al. 2016), both reading the
    # encoder's context head "h" (with two stochastic layers, the flow acts on q(z1|x)); each IAF step's MADE is
    # as wide as the last hidden layer.
    flow: str = "none"
    flow_steps: int = 10
    # 2: the IWAE paper's stacked model: x -> hidden -> z1 (latent_dim) -> top_hidden -> z2 (top_latent_dim),
    # and back z2 -> top_hidden -> z1 -> hidden -> x; the decoder reads z1. top_latent_dim and top_hidden are
    # read only with 2 layers, flow_steps only with a flow, prior_components only with a learned prior.
    stochastic_layers: int = 1
    top_latent_dim: int = 50
    top_hidden: tuple[int, ...] = (100, 100)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)  # type: ignore[assignment]
        self.hidden = tuple(int(v) for v in self.hidden)
        self.conv_channels = tuple(int(v) for v in self.conv_channels)
        self.top_hidden = tuple(int(v) for v in self.top_hidden)
        _check(len(self.input_shape) == 3 and all(v > 0 for v in self.input_shape),
               f"input_shape must be three positive sizes (channels, height, width); got {self.input_shape}")
        _check(isinstance(self.family, str) and bool(self.family),
               f"family must name a model family (vae, ae, ...); got {self.family!r}")
        _choice("architecture", self.architecture, ARCHITECTURES)
        _choice("likelihood", self.likelihood, LIKELIHOODS)
        _choice("activation", self.activation, ACTIVATIONS)
        _check(isinstance(self.latent_dim, int) and self.latent_dim >= 1,
               f"latent_dim must be a positive integer; got {self.latent_dim!r}")
        _check(all(h >= 1 for h in self.hidden), f"hidden sizes must be positive; got {self.hidden}")
        _choice("decoder_mean", self.decoder_mean, DECODER_MEANS)
        _check(_finite(self.fixed_sigma) and self.fixed_sigma > 0,
               f"fixed_sigma must be positive and finite; got {self.fixed_sigma}")
        _check(_finite(self.log_var_min) and _finite(self.log_var_max),
               f"log_var_min and log_var_max must be finite; got {self.log_var_min} and {self.log_var_max}")
        _check(self.log_var_min < self.log_var_max,
               f"log_var_min ({self.log_var_min}) must be below log_var_max ({self.log_var_max})")
        _check(self.init_std is None or (_finite(self.init_std) and self.init_std > 0),
               f"init_std must be positive and finite; got {self.init_std}")
        _check(len(self.conv_channels) >= 1 and all(c >= 1 for c in self.conv_channels),
               f"conv_channels must be one or more positive channel counts; got {self.conv_channels}")
        _check(len(self.conv_channels) <= 8, f"conv_channels allows at most 8 layers; got {len(self.conv_channels)}")
        _check(isinstance(self.num_classes, int) and not isinstance(self.num_classes, bool) and self.num_classes >= 0,
               f"num_classes must be 0 (unconditional) or a positive number of classes; got {self.num_classes!r}")
        _choice("prior", self.prior, PRIORS)
        _choice("flow", self.flow, FLOWS)
        for name in ("prior_components", "flow_steps", "top_latent_dim", "mixture_components"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   f"{name} must be a positive integer; got {value!r}")
        _check(self.stochastic_layers in STOCHASTIC_LAYERS and not isinstance(self.stochastic_layers, bool),
               f"stochastic_layers must be 1 or 2; got {self.stochastic_layers!r}")
        _check(all(h >= 1 for h in self.top_hidden), f"top_hidden sizes must be positive; got {self.top_hidden}")
        for part in ("encoder", "decoder"):
            spec = getattr(self, part)
            _check(spec is None or (isinstance(spec, dict) and isinstance(spec.get("class"), str)
                                    and isinstance(spec.get("args", {}), dict)),
                   f"{part} must be null or {{\"class\": \"module.Class\", \"args\": {{...}}}}; got {spec!r}")

    @property
    def data_dim(self) -> int:
        c, h, w = self.input_shape
        return c * h * w

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0


# Each model family's config class, by family name: ``aevb.models.register`` fills it, so that this
# module needs no import of the families. A family not listed reads as a plain ModelConfig.
MODEL_CONFIGS: dict[str, type[ModelConfig]] = {}


@dataclass
class DataConfig:
    """Which data set, where its files are, and how pixels become observations.

    ``binarize``: "dynamic" resamples x ~ Bernoulli(pixel) every batch on the device,
    "static" thresholds once at 0.5, "none" keeps grey levels in [0, 1] (refused under a
    Bernoulli decoder; a run that names none gets ``aevb.runconfig.default_binarize``).
    ``valid_size`` training examples are held out for validation (data sets with an
    official validation split ignore it); ``subset`` keeps only the first N training
    examples, for quick runs.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    binarize: str = "none"
    valid_size: int | None = None
    subset: int | None = None
    download: bool = True
    # Your own images (``folder:PATH``; see ``aevb.data.custom``): the (height, width) to
    # bring every image to (None: all images must already share one size), how
    # ("resize" ignores the aspect ratio, "crop" scales the shorter side and cuts the
    # centre), and 1 (grey) or 3 (RGB) channels (None: grey when every image is grey).
    image_size: tuple[int, int] | None = None
    fit: str = "resize"
    channels: int | None = None

    def __post_init__(self) -> None:
        _check(bool(self.dataset), "dataset must be named")
        if self.image_size is not None:
            size = (self.image_size,) * 2 if isinstance(self.image_size, int) else tuple(self.image_size)
            _check(len(size) == 2 and all(isinstance(v, int) and v >= 1 for v in size),
                   f"image_size must be a positive size or (height, width); got {self.image_size!r}")
            self.image_size = size  # type: ignore[assignment]
        _choice("fit", self.fit, FITS)
        _check(self.channels is None or self.channels in CHANNELS,
               f"channels must be 1 (grey) or 3 (RGB); got {self.channels!r}")
        _choice("binarize", self.binarize, BINARIZE)
        _check(self.valid_size is None or self.valid_size >= 0,
               f"valid_size must be >= 0; got {self.valid_size}")
        _check(self.subset is None or self.subset >= 1, f"subset must be >= 1; got {self.subset}")


# Named groups of settings, applied under explicit flags (aevb train --preset NAME).
# "fast": the batch size, step size and precision that reached test -ELBO <= 100 on
# dynamically binarized MNIST (784-400-20) in the least wall time on a 2-core CPU
# (benchmarks/train_speed.py target; docs/performance.md).
PRESETS: dict[str, dict[str, object]] = {
    "fast": {"batch_size": 512, "lr": 3e-3, "optimizer": "adam", "precision": "bf16"},
}


@dataclass
class TrainConfig:
    """The optimisation: SGVB estimator, L samples, minibatch M, optimizer."""

    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    estimator: str = "analytic"
    samples: int = 1
    # What the loss is: the ELBO (SGVB) or the importance-weighted bound with iwae_k samples.
    # None: the model family's default (a VAE's elbo, an AE's reconstruction).
    objective: str | None = None
    iwae_k: int = 5
    # The KL weight: beta (beta-VAE), scheduled by kl_schedule over warmup_steps (see
    # aevb.schedules); free_bits: nats per latent dimension below which the KL is not pushed.
    beta: float = 1.0
    kl_schedule: str = "constant"
    warmup_steps: int = 0
    free_bits: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # autocast dtype of the networks; log-likelihoods stay float32
    compile: bool = False  # torch.compile the objective (forward and backward); results keep their meaning
    # Guards: clip the gradient norm (None = off); skip a step whose gradient norm is not
    # finite or above skip_grad_norm; stop once max_skips consecutive steps were skipped (the
    # counter lives on the device and is read every 25 steps and before every checkpoint).
    clip_grad_norm: float | None = None
    skip_grad_norm: float = 1e6
    max_skips: int = 20
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = end of each epoch only
    eval_batch_size: int = 1000
    algorithm: str = "aevb"
    # The learning rate over the run (aevb.lr_schedules): constant; warmup (a linear ramp over
    # lr_warmup_steps optimizer steps, then constant); cosine (down to lr_min at the last step);
    # step (times lr_gamma every lr_step_epochs epochs); plateau (times lr_gamma when the validation
    # ELBO has not improved for lr_patience epochs). lr_warmup_steps ramps up any of them first.
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    lr_min: float = 0.0
    lr_gamma: float = 0.1
    lr_step_epochs: int = 10
    lr_patience: int = 5
    # Early stopping: stop when the validation ELBO has not improved for this many epochs (0 = never).
    # The weights of the best epoch are kept in best.safetensors either way.
    patience: int = 0
    # Epochs between samples and reconstructions drawn into RUN_DIR/figures and TensorBoard (0 = none).
    figures_every: int = 0
    # An MLflow tracking URI (e.g. file:/abs/mlruns or http://host:5000) to log params, per-epoch
    # metrics, figures and the run directory to; None = no MLflow (pip install "aevb[mlflow]").
    mlflow: str | None = None
    # A denoising model (Vincent et al. 2008; Im et al. 2017): each training batch is corrupted
    # ("gaussian:SIGMA", "mask:P" or "salt-pepper:P"; aevb.corruption) before the encoder sees it,
    # and the objective scores the reconstruction of the clean batch. None: no corruption.
    input_noise: str | None = None
    # The disentangling objectives (aevb.objectives; docs/disentangling-models.md). beta-TCVAE (Chen et al.
    # 2018): the weights of the index-code mutual information (tc_alpha) and of the dimension-wise KL
    # (tc_gamma), beta weighting the total correlation; tc_estimator "mws" or "mss" estimates log q(z).
    tc_alpha: float = 1.0
    tc_gamma: float = 1.0
    tc_estimator: str = "mss"
    # DIP-VAE (Kumar et al. 2018): the weights of the off-diagonal and diagonal covariance penalties; None for
    # dip_lambda_d: the paper's 10 * dip_lambda_od for DIP-VAE-I, dip_lambda_od for DIP-VAE-II.
    dip_lambda_od: float = 10.0
    dip_lambda_d: float | None = None
    # The capacity-annealed VAE (Burgess et al. 2018): capacity_gamma * |KL - C|, C rising linearly from 0
    # to capacity_max nats over capacity_steps optimizer steps.
    capacity_max: float = 25.0
    capacity_steps: int = 100_000
    capacity_gamma: float = 1000.0
    # FactorVAE (Kim & Mnih 2018): the weight of the discriminator's total-correlation estimate.
    factor_gamma: float = 35.0

    def __post_init__(self) -> None:
        _check(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be a positive integer; got {self.epochs!r}")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1,
               f"batch_size must be a positive integer; got {self.batch_size!r}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _check(_finite(self.lr) and self.lr > 0, f"learning rate must be positive and finite; got {self.lr}")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0,
               f"weight_decay must be >= 0 and finite; got {self.weight_decay}")
        _choice("estimator", self.estimator, ESTIMATORS)
        _check(isinstance(self.samples, int) and self.samples >= 1, f"samples (L) must be >= 1; got {self.samples!r}")
        _choice("precision", self.precision, PRECISIONS)
        _check(isinstance(self.compile, bool), f"compile must be true or false; got {self.compile!r}")
        _check(self.objective is None or self.objective in OBJECTIVES,
               f"objective must be one of {', '.join(OBJECTIVES)} (or null for the model's default); got {self.objective!r}")
        _choice("kl_schedule", self.kl_schedule, KL_SCHEDULES)
        _check(isinstance(self.iwae_k, int) and self.iwae_k >= 1, f"iwae_k must be >= 1; got {self.iwae_k!r}")
        _check(_finite(self.beta) and self.beta >= 0, f"beta must be >= 0 and finite; got {self.beta}")
        _check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
               f"warmup_steps must be >= 0; got {self.warmup_steps!r}")
        _check(self.kl_schedule == "constant" or self.warmup_steps > 0,
               f"kl_schedule {self.kl_schedule!r} needs warmup_steps > 0")
        _check(_finite(self.free_bits) and self.free_bits >= 0, f"free_bits must be >= 0 and finite; got {self.free_bits}")
        _check(self.clip_grad_norm is None or (_finite(self.clip_grad_norm) and self.clip_grad_norm > 0),
               f"clip_grad_norm must be positive and finite; got {self.clip_grad_norm}")
        _check(_finite(self.skip_grad_norm) and self.skip_grad_norm > 0,
               f"skip_grad_norm must be positive and finite; got {self.skip_grad_norm}")
        _check(isinstance(self.max_skips, int) and self.max_skips >= 1, f"max_skips must be >= 1; got {self.max_skips!r}")
        _check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0; got {self.checkpoint_every}")
        _check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1; got {self.eval_batch_size}")
        _choice("algorithm", self.algorithm, ALGORITHMS)
        self._check_lr_schedule()
        self._check_disentangling()
        for name in ("patience", "figures_every"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                   f"{name} must be an integer >= 0 (0 = off); got {value!r}")
        _check(self.mlflow is None or (isinstance(self.mlflow, str) and bool(self.mlflow.strip())),
               f"mlflow must be a tracking URI (or null for none); got {self.mlflow!r}")

    def _check_disentangling(self) -> None:
        for name in ("tc_alpha", "tc_gamma", "dip_lambda_od", "capacity_max", "capacity_gamma", "factor_gamma"):
            value = getattr(self, name)
            _check(_finite(value) and value >= 0, f"{name} must be >= 0 and finite; got {value!r}")
        _check(self.dip_lambda_d is None or (_finite(self.dip_lambda_d) and self.dip_lambda_d >= 0),
               f"dip_lambda_d must be >= 0 and finite (or null for the paper's choice); got {self.dip_lambda_d!r}")
        _choice("tc_estimator", self.tc_estimator, TC_ESTIMATORS)
        _check(isinstance(self.capacity_steps, int) and not isinstance(self.capacity_steps, bool)
               and self.capacity_steps >= 1, f"capacity_steps must be a positive integer; got {self.capacity_steps!r}")
        if self.objective == "capacity":
            _check(self.beta == 1.0 and self.kl_schedule == "constant",
                   "the capacity objective weights |KL - C| by capacity_gamma and raises C over capacity_steps; "
                   "leave beta at 1 and kl_schedule constant")
        if self.objective == "tcvae":
            _check(self.samples == 1 and self.free_bits == 0,
                   "the tcvae objective uses one sample of z per example and no free bits; leave samples at 1 "
                   "and free_bits at 0")

    def _check_lr_schedule(self) -> None:
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for name, low in (("lr_warmup_steps", 0), ("lr_step_epochs", 1), ("lr_patience", 0)):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= low,
                   f"{name} must be an integer >= {low}; got {value!r}")
        _check(self.lr_schedule != "warmup" or self.lr_warmup_steps > 0,
               "lr_schedule 'warmup' needs lr_warmup_steps > 0")
        _check(self.lr_schedule != "constant" or self.lr_warmup_steps == 0,
               "lr_warmup_steps needs an lr_schedule: warmup (a ramp, then constant), cosine, step or plateau")
        _check(0 < self.lr_gamma < 1, f"lr_gamma must be between 0 and 1 (the factor the rate is multiplied by); "
               f"got {self.lr_gamma}")
        _check(0 <= self.lr_min < self.lr,
               f"lr_min must be >= 0 and below the learning rate {self.lr}; got {self.lr_min}")
        if self.input_noise is not None:
            parse_input_noise(self.input_noise)
            _check(self.algorithm == "aevb", "input_noise trains a denoising model with the aevb algorithm; "
                   "wake-sleep does not take it")


@dataclass
class RunConfig:
    """Everything a run directory needs to rebuild and continue a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """The configuration a dict describes; one written by an older aevb is migrated first. The model
        part is read into its family's own config class (``MODEL_CONFIGS``)."""
        _check(isinstance(d, dict), "config must be a JSON object")
        version = d.get("format_version")
        _check(version in MIGRATIONS or version == FORMAT_VERSION,
               f"config format_version {version!r} is not supported by this aevb (reads 1 to {FORMAT_VERSION}); "
               "use the aevb version that wrote it")
        d = _migrate(d)
        model = d.get("model", {})
        if isinstance(model, dict) and "family" in model:
            check_type(ModelConfig, "family", model["family"], "model")
        family = model.get("family", "vae") if isinstance(model, dict) else "vae"
        hint = (None if family in MODEL_CONFIGS else
                f"(model family {family!r} is not registered: import the module that registers it first)")
        return cls(model=_build(MODEL_CONFIGS.get(family, ModelConfig), model, "model", hint),
                   data=_build(DataConfig, d.get("data", {}), "data"),
                   train=_build(TrainConfig, d.get("train", {}), "train"),
                   format_version=FORMAT_VERSION)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_json(Path(path).read_text())


def _from_1(d: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (before model families): ``model.kind`` is now ``model.family``, and format 1's
    default objective ``elbo`` (which an AE ignored) is now null, the family's default."""
    model = dict(d.get("model", {}))
    train = dict(d.get("train", {}))
    model["family"] = model.pop("kind", "vae")
    if train.get("objective", "elbo") == "elbo":
        train["objective"] = None
    return {**d, "model": model, "train": train, "format_version": 2}


MIGRATIONS = {1: _from_1}  # format_version -> the function that lifts it by one version


def _migrate(d: dict[str, Any]) -> dict[str, Any]:
    while d.get("format_version") in MIGRATIONS:
        d = MIGRATIONS[d["format_version"]](d)
    return d


def _build(cls: type, d: Any, section: str, hint: str | None = None) -> Any:
    """The ``cls`` dataclass a JSON object ``d`` (the ``section`` of config.json) describes; every
    field is checked against its annotation first, so a wrong kind of value names the field."""
    _check(isinstance(d, dict), f"{section} must be a JSON object ({cls.__name__}); got {_kind(d)}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    _check(not unknown, f"unknown {cls.__name__} field(s): {', '.join(unknown)}" + (f" {hint}" if hint else ""))
    for name, value in d.items():
        check_type(cls, name, value, section)
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


# --- field types ------------------------------------------------------------------------


def field_hints(cls: type) -> dict[str, Any]:
    """The evaluated annotation of each field of a config dataclass ({} when they cannot be evaluated)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation naming something its module cannot see: leave it unchecked
        return {}


def check_type(cls: type, name: str, value: Any, section: str) -> None:
    """``ConfigError`` naming ``section.name`` and the expected type when ``value`` does not fit the
    field's annotation (a number where a float is expected, a list where a tuple is)."""
    hint = field_hints(cls).get(name)
    if hint is not None and not _fits(value, hint):
        raise ConfigError(f"{section}.{name} must be {_describe(hint)}; got {_kind(value)}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # a kind this check does not know: the dataclass validates it


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _describe(hint: Any) -> str:
    """What a value of this annotation looks like in JSON, e.g. "a list of integers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_PLURALS.get(args[0], 'values')}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_PLURALS.get(args[0], 'values')}"
        return f"a list of {len(args)} values"
    if origin is dict or hint is dict:
        return "an object"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def _kind(value: Any) -> str:
    """A value as a message shows it, with its JSON kind: "the string '0.01'", "the integer 400"."""
    if isinstance(value, bool):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, numbers.Integral):
        return f"the integer {value}"
    if isinstance(value, numbers.Real):
        return f"the number {value}"
    if isinstance(value, (list, tuple)):
        return f"the list {json.dumps(list(value), default=str)}"
    if isinstance(value, dict):
        return "an object"
    return f"{value!r} (a {type(value).__name__})"
