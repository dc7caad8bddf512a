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

FORMAT_VERSION = 1  # bump when config.json or the checkpoint layout changes incompatibly

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_fixed")
ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "linear")
KINDS = ("vae", "ae")
ARCHITECTURES = ("mlp",)
OPTIMIZERS = ("adagrad", "adam", "sgd")
ESTIMATORS = ("analytic", "mc")  # SGVB estimator B (analytic KL) and A (Monte Carlo KL)
BINARIZE = ("none", "dynamic", "static")
ALGORITHMS = ("aevb", "wake-sleep")  # SGVB, or the wake-sleep baseline (aevb.wake_sleep)


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong kind."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    _check(value in options, f"{name} must be one of {', '.join(options)}; got {value!r}")


@dataclass
class ModelConfig:
    """The networks and likelihood.

    ``input_shape`` is (channels, height, width). ``hidden`` lists the widths of the
    encoder's hidden layers; the decoder mirrors them. The paper's MNIST model is
    ``hidden=(500,), activation="tanh"``; its Frey Face model ``hidden=(200,)`` with
    ``likelihood="gaussian"`` (sigmoid mean, learned log-variance).
    """

    input_shape: tuple[int, int, int] = (1, 28, 28)
    kind: str = "vae"
    architecture: str = "mlp"
    likelihood: str = "bernoulli"
    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    latent_dim: int = 20
    # Gaussian decoders: the fixed standard deviation of "gaussian_fixed" (MSE up to
    # a constant and a scale) and the clamp range of every log-variance.
    fixed_sigma: float = 1.0
    log_var_min: float = -10.0
    log_var_max: float = 10.0
    # Standard deviation of the N(0, std^2) weight initialisation (the paper uses
    # 0.01); None keeps PyTorch's default (Kaiming-uniform) initialisation.
    init_std: float | None = None

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)  # type: ignore[assignment]
        self.hidden = tuple(int(v) for v in self.hidden)
        _check(len(self.input_shape) == 3 and all(v > 0 for v in self.input_shape),
               f"input_shape must be three positive sizes (channels, height, width); got {self.input_shape}")
        _choice("kind", self.kind, KINDS)
        _choice("architecture", self.architecture, ARCHITECTURES)
        _choice("likelihood", self.likelihood, LIKELIHOODS)
        _choice("activation", self.activation, ACTIVATIONS)
        _check(isinstance(self.latent_dim, int) and self.latent_dim >= 1,
               f"latent_dim must be a positive integer; got {self.latent_dim!r}")
        _check(all(h >= 1 for h in self.hidden), f"hidden sizes must be positive; got {self.hidden}")
        _check(self.fixed_sigma > 0, f"fixed_sigma must be positive; got {self.fixed_sigma}")
        _check(self.log_var_min < self.log_var_max,
               f"log_var_min ({self.log_var_min}) must be below log_var_max ({self.log_var_max})")
        _check(self.init_std is None or self.init_std > 0, f"init_std must be positive; got {self.init_std}")

    @property
    def data_dim(self) -> int:
        c, h, w = self.input_shape
        return c * h * w


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

    def __post_init__(self) -> None:
        _check(bool(self.dataset), "dataset must be named")
        _choice("binarize", self.binarize, BINARIZE)
        _check(self.valid_size is None or self.valid_size >= 0,
               f"valid_size must be >= 0; got {self.valid_size}")
        _check(self.subset is None or self.subset >= 1, f"subset must be >= 1; got {self.subset}")


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
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = end of each epoch only
    eval_batch_size: int = 1000
    algorithm: str = "aevb"

    def __post_init__(self) -> None:
        _check(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be a positive integer; got {self.epochs!r}")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1,
               f"batch_size must be a positive integer; got {self.batch_size!r}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _check(self.lr > 0, f"learning rate must be positive; got {self.lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0; got {self.weight_decay}")
        _choice("estimator", self.estimator, ESTIMATORS)
        _check(isinstance(self.samples, int) and self.samples >= 1, f"samples (L) must be >= 1; got {self.samples!r}")
        _check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0; got {self.checkpoint_every}")
        _check(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1; got {self.eval_batch_size}")
        _choice("algorithm", self.algorithm, ALGORITHMS)


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
        _check(isinstance(d, dict), "config must be a JSON object")
        version = d.get("format_version")
        _check(version == FORMAT_VERSION,
               f"config format_version {version!r} is not supported by this aevb (expects {FORMAT_VERSION}); "
               "retrain the model or use the aevb version that wrote it")
        return cls(model=_build(ModelConfig, d.get("model", {})),
                   data=_build(DataConfig, d.get("data", {})),
                   train=_build(TrainConfig, d.get("train", {})),
                   format_version=version)

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


def _build(cls: type, d: Any) -> Any:
    _check(isinstance(d, dict), f"{cls.__name__} must be a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    _check(not unknown, f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None
