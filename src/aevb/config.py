"""Typed configuration: what a model is, what it is trained on, and how.

Every run directory holds these three as ``config.json``; a model is rebuilt from
that file and ``model.safetensors`` alone. Each dataclass validates itself on
construction, so a bad value fails early with a message that names the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2  # bump when config.json or the checkpoint layout changes incompatibly (then migrate in _migrate)

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_fixed", "discretized_logistic")
ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "linear")
ARCHITECTURES = ("mlp", "conv")
OPTIMIZERS = ("adagrad", "adam", "sgd")
ESTIMATORS = ("analytic", "mc")  # SGVB estimator B (analytic KL) and A (Monte Carlo KL)
BINARIZE = ("none", "dynamic", "static")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp16 (with a gradient scaler) needs CUDA
OBJECTIVES = ("elbo", "iwae", "reconstruction")  # the bound, the IWAE bound, an AE's -log p(x|code)
KL_SCHEDULES = ("constant", "linear", "cyclical")
DECODER_MEANS = ("sigmoid", "identity")
CHANNELS = (1, 3)  # grey, RGB
FITS = ("resize", "crop")  # how images of another size are brought to image_size
ALGORITHMS = ("aevb", "wake-sleep")  # SGVB, or the wake-sleep baseline (aevb.wake_sleep)
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


@dataclass
class ModelConfig:
    """The networks and likelihood.

    ``input_shape`` is (channels, height, width). ``hidden`` lists the widths of the
    encoder's hidden layers; the decoder mirrors them.

    ``architecture="conv"`` puts a convolutional trunk before (encoder) and after
    (decoder) those layers: one 3x3 stride-2 convolution per entry of ``conv_channels``
    (each halves height and width, rounding up), mirrored by 4x4 stride-2 transposed
    convolutions in the decoder, whose output is cropped to exactly (C, H, W).

    ``likelihood="discretized_logistic"`` is for 8-bit images scaled to [0, 1]: a
    logistic per pixel integrated over its 1/255-wide bin (``distributions.DiscretizedLogistic``),
    so log p(x) is a probability of the pixel values and bits/dim are comparable to the literature. The paper's MNIST model is
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

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)  # type: ignore[assignment]
        self.hidden = tuple(int(v) for v in self.hidden)
        self.conv_channels = tuple(int(v) for v in self.conv_channels)
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
        _check(self.fixed_sigma > 0, f"fixed_sigma must be positive; got {self.fixed_sigma}")
        _check(self.log_var_min < self.log_var_max,
               f"log_var_min ({self.log_var_min}) must be below log_var_max ({self.log_var_max})")
        _check(self.init_std is None or self.init_std > 0, f"init_std must be positive; got {self.init_std}")
        _check(len(self.conv_channels) >= 1 and all(c >= 1 for c in self.conv_channels),
               f"conv_channels must be one or more positive channel counts; got {self.conv_channels}")
        _check(len(self.conv_channels) <= 8, f"conv_channels allows at most 8 layers; got {len(self.conv_channels)}")
        _check(isinstance(self.num_classes, int) and not isinstance(self.num_classes, bool) and self.num_classes >= 0,
               f"num_classes must be 0 (unconditional) or a positive number of classes; got {self.num_classes!r}")
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
    "static" thresholds once at 0.5, "none" keeps grey levels in [0, 1].
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
    # A denoising model (Vincent et al. 2008; Im et al. 2017): each training batch is corrupted
    # ("gaussian:SIGMA", "mask:P" or "salt-pepper:P"; aevb.corruption) before the encoder sees it,
    # and the objective scores the reconstruction of the clean batch. None: no corruption.
    input_noise: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be a positive integer; got {self.epochs!r}")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1,
               f"batch_size must be a positive integer; got {self.batch_size!r}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _check(self.lr > 0, f"learning rate must be positive; got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}")
        _choice("estimator", self.estimator, ESTIMATORS)
        _check(isinstance(self.samples, int) and self.samples >= 1, f"samples (L) must be >= 1; got {self.samples!r}")
        _choice("precision", self.precision, PRECISIONS)
        _check(isinstance(self.compile, bool), f"compile must be true or false; got {self.compile!r}")
        _check(self.objective is None or self.objective in OBJECTIVES,
               f"objective must be one of {', '.join(OBJECTIVES)} (or null for the model's default); got {self.objective!r}")
        _choice("kl_schedule", self.kl_schedule, KL_SCHEDULES)
        _check(isinstance(self.iwae_k, int) and self.iwae_k >= 1, f"iwae_k must be >= 1; got {self.iwae_k!r}")
        _check(self.beta >= 0, f"beta must be >= 0; got {self.beta}")
        _check(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0,
               f"warmup_steps must be >= 0; got {self.warmup_steps!r}")
        _check(self.kl_schedule == "constant" or self.warmup_steps > 0,
               f"kl_schedule {self.kl_schedule!r} needs warmup_steps > 0")
        _check(self.free_bits >= 0, f"free_bits must be >= 0; got {self.free_bits}")
        _check(self.clip_grad_norm is None or self.clip_grad_norm > 0,
               f"clip_grad_norm must be positive; got {self.clip_grad_norm}")
        _check(self.skip_grad_norm > 0, f"skip_grad_norm must be positive; got {self.skip_grad_norm}")
        _check(isinstance(self.max_skips, int) and self.max_skips >= 1, f"max_skips must be >= 1; got {self.max_skips!r}")
        _check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0; got {self.checkpoint_every}")
        _check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1; got {self.eval_batch_size}")
        _choice("algorithm", self.algorithm, ALGORITHMS)
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
        family = model.get("family", "vae") if isinstance(model, dict) else "vae"
        hint = (None if family in MODEL_CONFIGS else
                f"(model family {family!r} is not registered: import the module that registers it first)")
        return cls(model=_build(MODEL_CONFIGS.get(family, ModelConfig), model, hint),
                   data=_build(DataConfig, d.get("data", {})),
                   train=_build(TrainConfig, d.get("train", {})),
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


def _build(cls: type, d: Any, hint: str | None = None) -> Any:
    _check(isinstance(d, dict), f"{cls.__name__} must be a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    _check(not unknown, f"unknown {cls.__name__} field(s): {', '.join(unknown)}" + (f" {hint}" if hint else ""))
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None
