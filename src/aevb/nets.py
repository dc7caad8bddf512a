"""Encoder and decoder networks, built by name from a ``ModelConfig``.

The MLPs follow the paper's appendix C: each hidden layer is ``activation(W h + b)``;
the encoder ends in linear heads (mu and log sigma^2 for a VAE, the code for an AE);
the decoder ends in the likelihood's parameters reshaped to the image (C, H, W).

The convolutional networks (``architecture="conv"``) wrap the same MLP: the encoder is
stride-2 3x3 convolutions (each maps a size n to ceil(n / 2)), a flatten, the MLP and
the heads; the decoder is the mirrored MLP, a linear layer to the smallest feature map,
stride-2 4x4 transposed convolutions (each doubles the size), a 3x3 convolution to the
likelihood's parameters, and a crop to exactly (C, H, W). Any H, W >= 1 and any C work.

Conditional models (``num_classes = K > 0``) get the label as a one-hot vector ``c``
(``aevb.conditional.one_hot``): the MLP encoder reads [x, c], the convolutional encoder
reads c as K constant extra input channels, and both decoders read [z, c] in their
first linear layer. Unconditional networks take ``c=None``.

Your own networks (``aevb.train(..., encoder=MyEncoder(...), decoder=MyDecoder(...))``) follow
this contract, checked with a clear error before training (``check_networks``):

- the **encoder** is called as ``encoder(x)`` with x shaped (B, C, H, W) (a conditional model:
  ``encoder(x, c)``, c the one-hot labels (B, K)) and returns a dict of tensors (B, latent_dim),
  one per head the family reads: a VAE's ``"mu"`` and ``"log_var"`` (log sigma^2), and with a flow
  posterior ``"h"`` (the flow's context), an AE's ``"code"``;
- the **decoder** is called as ``decoder(z)`` with z shaped (..., latent_dim) (conditional:
  ``decoder(z, c)``) and returns the likelihood's parameters shaped (..., C, H, W): logits for
  ``bernoulli``, the pre-sigmoid mean for ``gaussian_fixed``; for ``gaussian`` (learned variance)
  and ``discretized_logistic`` (..., 2, C, H, W): the mean, then the log-variance / log-scale; for
  ``discretized_logistic_mixture`` with K components (..., P, C, H, W), P = 3K (+ K for 3 channels): K
  planes of logits, of means, of log-scales (and of colour coefficients), as
  ``DiscretizedLogisticMixture.from_params`` reads them. It may instead return a likelihood object of
  ``aevb.distributions``.

A run records each of your classes as its import path and constructor arguments
(``network_spec``), never as pickled code: the arguments are read from the instance's attributes
of the same names (the scikit-learn ``get_params`` convention), or from an ``init_args()`` method
if the class defines one, and must be JSON values. ``aevb.load`` re-imports the class only when
asked to (``trust_code=True``, or the class passed in ``networks``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import os
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .config import ConfigError, ModelConfig
from .distributions import Bernoulli, DiscretizedLogistic, DiscretizedLogisticMixture, Gaussian, mixture_params_per_channel

_ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,
}


# --- dense layers ------------------------------------------------------------------------------------
#
# On a CPU, activation(x W^T + b) runs as one oneDNN call (torch.ops.mkldnn._linear_pointwise, the op
# inductor emits on CPU), forward and backward: its float32 and bf16 GEMMs at these shapes run about
# twice as fast as the MKL GEMMs behind torch.nn.functional.linear on the CPUs we measured
# (docs/performance.md), and the activation is fused into the GEMM. It is used only where it computes
# the same function (float32 or a bf16 autocast region, an activation oneDNN fuses, not inside
# torch.compile), checked once against addmm at first use; AEVB_ONEDNN=0 turns it off.

_POST_OPS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Identity: "none", type(None): "none"}
ONEDNN = os.environ.get("AEVB_ONEDNN", "1") != "0"


@functools.cache
def onednn_linear_works() -> bool:
    """Whether oneDNN's fused linear runs here and agrees with addmm. It is a private op: anything
    unexpected means no."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(8, 16, generator=g), torch.randn(4, 16, generator=g), torch.randn(4, generator=g)
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "tanh", [], "")
        dw = torch.ops.mkldnn._linear_pointwise(y.t(), x.t(), None, "none", [], "")  # strided operands
        return bool(torch.allclose(y, torch.tanh(torch.addmm(b, x, w.t())), atol=1e-5)
                    and torch.allclose(dw, y.t() @ x, atol=1e-4))
    except Exception:  # noqa: BLE001 -- missing op, changed signature: use addmm
        return False


class _OneDNNDense(torch.autograd.Function):
    """y = act(x W^T + b) for rows x (N, in), with its gradients, every GEMM through oneDNN."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, post_op: str) -> Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], "")
        ctx.save_for_backward(x, weight, y)
        ctx.post_op = post_op
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, y = ctx.saved_tensors
        op = ctx.post_op
        if op == "relu":
            da = dy.masked_fill(y <= 0, 0)
        elif op == "tanh":
            da = torch.addcmul(dy, dy, y * y, value=-1)  # dy (1 - y^2)
        elif op == "sigmoid":
            da = dy * (y - y * y)
        else:
            da = dy
        lin = torch.ops.mkldnn._linear_pointwise
        dx = lin(da, weight.t(), None, "none", [], "") if ctx.needs_input_grad[0] else None  # (N, in)
        dw = lin(da.t(), x.t(), None, "none", [], "") if ctx.needs_input_grad[1] else None  # (out, in)
        db = da.sum(0) if ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def _compute_dtype(h: Tensor) -> torch.dtype:
    if h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return h.dtype


def dense(h: Tensor, linear: nn.Linear, activation: nn.Module | None = None) -> Tensor:
    """activation(linear(h)) for h shaped (..., in): one oneDNN call on a CPU where it computes the
    same (see above), else the modules themselves."""
    post_op = _POST_OPS.get(type(activation))
    dtype = _compute_dtype(h)
    if (ONEDNN and post_op is not None and h.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and linear.weight.dtype in (torch.float32, torch.bfloat16) and not torch.compiler.is_compiling()
            and onednn_linear_works()):
        rows = h.reshape(-1, h.shape[-1]).to(dtype)
        bias = None if linear.bias is None else linear.bias.to(dtype)
        y = _OneDNNDense.apply(rows, linear.weight.to(dtype), bias, post_op)
        return y.view(*h.shape[:-1], y.shape[-1])
    out = linear(h)
    return out if activation is None else activation(out)


def layer_pairs(trunk: nn.Sequential) -> list[tuple[nn.Linear, nn.Module]]:
    """An ``mlp`` trunk as (linear layer, the activation after it) pairs, first to last."""
    mods = list(trunk)
    return list(zip(mods[0::2], mods[1::2]))


def run_mlp(trunk: nn.Sequential, h: Tensor) -> Tensor:
    """An ``mlp`` trunk applied to h (..., in), each layer through ``dense``."""
    for linear, activation in layer_pairs(trunk):
        h = dense(h, linear, activation)
    return h


def mlp(sizes: list[int], activation: str) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, each followed by the activation."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), _ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


def _with_label(v: Tensor, c: Tensor | None) -> Tensor:
    """[v, c] along the last dimension, c (B, K) broadcast over v's leading sample dimensions."""
    if c is None:
        return v
    c = c.to(device=v.device, dtype=v.dtype).expand(*v.shape[:-1], c.shape[-1])  # (B, K) -> (..., B, K)
    return torch.cat([v, c], -1)  # (..., D) -> (..., D + K)


class MLPEncoder(nn.Module):
    """[x, c] -> h -> heads. ``heads`` names the linear outputs, each ``latent_dim`` wide."""

    def __init__(self, cfg: ModelConfig, heads: tuple[str, ...]):
        super().__init__()
        sizes = [cfg.data_dim + cfg.num_classes, *cfg.hidden]
        self.trunk = mlp(sizes, cfg.activation)
        self.heads = nn.ModuleDict({name: nn.Linear(sizes[-1], cfg.latent_dim) for name in heads})

    def forward(self, x: Tensor, c: Tensor | None = None) -> dict[str, Tensor]:
        h = run_mlp(self.trunk, _with_label(x.flatten(1), c))  # (B, C*H*W [+ K]) -> (B, hidden[-1])
        return {name: dense(h, head) for name, head in self.heads.items()}


def _params_per_pixel(cfg: ModelConfig) -> int:
    """How many numbers the decoder emits per pixel and channel: 2 (location and log-scale/variance), 1, or
    the mixture of discretized logistics' planes (``mixture_params_per_channel``)."""
    if cfg.likelihood == "discretized_logistic_mixture":
        return mixture_params_per_channel(cfg.mixture_components, cfg.input_shape[0])
    return 2 if cfg.likelihood in ("gaussian", "discretized_logistic") else 1


def likelihood_from_params(cfg: ModelConfig, params: Tensor):
    """p(x|z) from a decoder's parameters (..., P, C, H, W), P = ``_params_per_pixel(cfg)``."""
    if cfg.likelihood == "discretized_logistic_mixture":
        mean_fn = torch.sigmoid if cfg.decoder_mean == "sigmoid" else None
        return DiscretizedLogisticMixture.from_params(params, cfg.mixture_components, mean_fn)
    second = params[..., 1, :, :, :] if params.shape[-4] == 2 else None
    return make_likelihood(cfg, params[..., 0, :, :, :], second)


def make_likelihood(cfg: ModelConfig, out: Tensor, second: Tensor | None) -> Bernoulli | Gaussian | DiscretizedLogistic:
    """The likelihood from the decoder's raw outputs, both shaped (..., C, H, W): ``out`` is the
    logits (Bernoulli) or the pre-activation mean; ``second`` the log-variance or log-scale."""
    if cfg.likelihood == "bernoulli":
        return Bernoulli(out, event_ndim=3)
    mean = torch.sigmoid(out) if cfg.decoder_mean == "sigmoid" else out
    if cfg.likelihood == "discretized_logistic":  # its log-scale is clamped by the likelihood itself
        return DiscretizedLogistic(mean, second, event_ndim=3)
    if second is None:
        return Gaussian(mean, torch.full_like(mean, 2.0 * math.log(cfg.fixed_sigma)), event_ndim=3)
    bounds = (cfg.log_var_min, cfg.log_var_max)
    return Gaussian(mean, second.clamp(*bounds), event_ndim=3, log_var_bounds=bounds)


class NetworkError(ValueError):
    """A network does not follow the contract above, or cannot be recorded or rebuilt."""


class UntrustedCode(NetworkError):
    """Rebuilding a run's network would import code that the caller has not said to trust:
    ``part`` ("encoder" or "decoder") of class ``path`` ("module:QualName")."""

    def __init__(self, part: str, path: str):
        self.part, self.path = part, path
        name = path.rpartition(":")[2].rpartition(".")[2]
        super().__init__(f"this run's {part} is your own class {path}; rebuilding it imports and runs that code, "
                         f"which aevb does only when asked: load with trust_code=True, or pass the class "
                         f"(networks={{'{part}': {name}}})")


def as_likelihood(cfg: ModelConfig, out):
    """p(x|z) from a decoder's output: a likelihood object passes through; a tensor of parameters
    (..., C, H, W), or (..., 2, C, H, W) for two-parameter likelihoods, becomes ``cfg.likelihood``."""
    if not isinstance(out, Tensor):
        if not (hasattr(out, "log_prob") and hasattr(out, "mean")):
            raise NetworkError(f"the decoder returned {type(out).__name__}; it must return a tensor of the "
                               "likelihood's parameters or a likelihood object (aevb.nets explains the contract)")
        return out
    shape = tuple(cfg.input_shape)
    planes = _params_per_pixel(cfg)
    want = (planes, *shape) if planes > 1 else shape
    if tuple(out.shape[-len(want):]) != want:
        raise NetworkError(f"the decoder returned a tensor shaped {tuple(out.shape)}; a {cfg.likelihood} decoder "
                           f"of {shape[0]}x{shape[1]}x{shape[2]} images returns (..., {', '.join(map(str, want))})")
    return likelihood_from_params(cfg, out) if planes > 1 else make_likelihood(cfg, out, None)


def network_spec(module: nn.Module) -> dict[str, Any]:
    """{"class": "module:QualName", "args": {...}}: what rebuilds ``module``'s class with the same
    constructor arguments (read as described in this module's docstring)."""
    cls = type(module)
    name = cls.__name__
    if callable(getattr(module, "init_args", None)):
        args = dict(module.init_args())
    else:
        args = {}
        for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise NetworkError(f"{name}.__init__ takes *{param.name}; aevb cannot record such arguments: "
                                   "define init_args() returning the constructor's keyword arguments")
            if not hasattr(module, param.name):
                raise NetworkError(f"{name}.__init__ takes {param.name!r} but the instance has no attribute of that "
                                   f"name; store it (self.{param.name} = {param.name}) or define init_args()")
            args[param.name] = getattr(module, param.name)
    try:
        text = json.dumps(args, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise NetworkError(f"{name}'s constructor arguments ({', '.join(sorted(args))}) must be JSON values "
                           f"(numbers, strings, lists, dicts) to be recorded in config.json: {e}") from None
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "args": json.loads(text)}  # tuples become lists


def load_network(spec: Mapping[str, Any], part: str, trust_code: bool = False,
                 networks: Mapping[str, type] | None = None) -> nn.Module:
    """Rebuild a network recorded by ``network_spec``: with the class from ``networks[part]`` when
    given, else by importing ``spec["class"]``, which needs ``trust_code``."""
    path = spec["class"]
    if networks is not None and part in networks:
        cls = networks[part]
    elif not trust_code:
        raise UntrustedCode(part, path)
    else:
        module_name, _, qualname = path.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for attr in qualname.split("."):
                obj = getattr(obj, attr)
        except (ImportError, AttributeError) as e:
            hint = (" (it was defined in a script: pass the class itself in networks)" if module_name == "__main__"
                    else "")
            raise NetworkError(f"cannot import the {part} class {path}: {e}{hint}") from None
        cls = obj
    try:
        return cls(**spec.get("args", {}))
    except TypeError as e:
        raise NetworkError(f"cannot rebuild the {part} {path} from its recorded arguments: {e}") from None


class MLPDecoder(nn.Module):
    """[z, c] -> h -> likelihood parameters, shaped (..., C, H, W)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        sizes = [cfg.latent_dim + cfg.num_classes, *reversed(cfg.hidden)]
        self.trunk = mlp(sizes, cfg.activation)
        planes = _params_per_pixel(cfg)
        # logits for Bernoulli, pre-sigmoid mean for the others; every plane of a mixture's parameters
        self.mean = nn.Linear(sizes[-1], cfg.data_dim * (planes if planes > 2 else 1))
        # log-variance (gaussian) or log-scale (discretized_logistic)
        self.log_var = nn.Linear(sizes[-1], cfg.data_dim) if planes == 2 else None

    def hidden_layers(self) -> list[tuple[nn.Linear, nn.Module]]:
        """The trunk as (linear layer, the activation after it) pairs, first to last; ``self.mean``
        is the output layer (the logits of a Bernoulli decoder)."""
        return layer_pairs(self.trunk)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Bernoulli | Gaussian | DiscretizedLogistic:
        cfg = self.cfg
        h = run_mlp(self.trunk, _with_label(z, c))
        shape = (*z.shape[:-1], *cfg.input_shape)  # (..., latent) -> (..., C, H, W)
        if self.mean.out_features > cfg.data_dim:  # a mixture: (..., P * D) -> (..., P, C, H, W)
            return likelihood_from_params(cfg, dense(h, self.mean).view(*z.shape[:-1], -1, *cfg.input_shape))
        second = dense(h, self.log_var).view(shape) if self.log_var is not None else None
        return make_likelihood(cfg, dense(h, self.mean).view(shape), second)


def conv_sizes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """(height, width) of the input and after each stride-2 convolution: n -> ceil(n / 2)."""
    h, w = cfg.input_shape[1:]
    sizes = [(h, w)]
    for _ in cfg.conv_channels:
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


class ConvEncoder(nn.Module):
    """[x, c as constant channels] (B, C + K, H, W) -> stride-2 convs -> flatten -> MLP -> heads."""

    def __init__(self, cfg: ModelConfig, heads: tuple[str, ...]):
        super().__init__()
        act = _ACTIVATIONS[cfg.activation]
        layers: list[nn.Module] = []
        c_in = cfg.input_shape[0] + cfg.num_classes
        for c_out in cfg.conv_channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), act()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        h, w = conv_sizes(cfg)[-1]
        sizes = [c_in * h * w, *cfg.hidden]
        self.trunk = mlp(sizes, cfg.activation)
        self.heads = nn.ModuleDict({name: nn.Linear(sizes[-1], cfg.latent_dim) for name in heads})
        self.input_shape = cfg.input_shape

    def forward(self, x: Tensor, c: Tensor | None = None) -> dict[str, Tensor]:
        x = x.reshape(-1, *self.input_shape)  # (B, D) or (B, C, H, W) -> (B, C, H, W)
        if c is not None:
            c = c.to(device=x.device, dtype=x.dtype)
            planes = c[:, :, None, None].expand(-1, -1, *x.shape[2:])  # (B, K) -> (B, K, H, W)
            x = torch.cat([x, planes], 1)  # (B, C + K, H, W)
        h = run_mlp(self.trunk, self.convs(x).flatten(1))  # (B, c_last, h, w) -> (B, hidden[-1])
        return {name: dense(h, head) for name, head in self.heads.items()}


class ConvDecoder(nn.Module):
    """[z, c] -> MLP -> linear to (c_last, h, w) -> transposed convs -> conv to parameters -> crop to (C, H, W)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        act = _ACTIVATIONS[cfg.activation]
        sizes = [cfg.latent_dim + cfg.num_classes, *reversed(cfg.hidden)]
        self.trunk = mlp(sizes, cfg.activation)
        self.start = conv_sizes(cfg)[-1]
        chans = list(reversed(cfg.conv_channels))
        self.project = nn.Sequential(nn.Linear(sizes[-1], chans[0] * self.start[0] * self.start[1]), act())
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:] + chans[-1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), act()]  # (h, w) -> (2h, 2w)
        self.deconvs = nn.Sequential(*layers)
        self.out = nn.Conv2d(chans[-1], cfg.input_shape[0] * _params_per_pixel(cfg), 3, padding=1)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Bernoulli | Gaussian | DiscretizedLogistic:
        cfg = self.cfg
        channels, height, width = cfg.input_shape
        lead = z.shape[:-1]
        zc = _with_label(z, c)
        h = self.project(run_mlp(self.trunk, zc.reshape(-1, zc.shape[-1])))  # (..., Z [+ K]) -> (N, c_last*h*w)
        h = self.deconvs(h.view(h.shape[0], -1, *self.start))  # (N, c_first, h * 2^n, w * 2^n)
        params = self.out(h)[:, :, :height, :width]  # crop: h * 2^n >= H by construction
        params = params.reshape(*lead, -1, channels, height, width)  # (..., P, C, H, W)
        return likelihood_from_params(cfg, params)


# --- conv64: the network of Locatello et al. (2019) for 64x64 images -----------------------------------
#
# disentanglement_lib's conv_encoder / deconv_decoder (methods/shared/architectures.py), after the beta-VAE
# paper's Table 1: four stride-2 convolutions 32-32-64-64 (4x4 kernels, then 2x2) take 64x64 to 4x4, a dense
# layer of 256 and the heads; the decoder mirrors it with four 4x4 stride-2 transposed convolutions. The dense
# widths are ``hidden`` (a 64x64 built-in data set defaults to (256,), the paper's), the activation is
# ``activation`` (ReLU in the paper); the convolutions are fixed (``conv_channels`` is not read).

CONV64_CHANNELS = (32, 32, 64, 64)
CONV64_KERNELS = (4, 4, 2, 2)  # TF "same" padding at stride 2: 1 for the 4x4 kernels, 0 for the 2x2 ones


def check_conv64(cfg: ModelConfig) -> None:
    """``ConfigError`` naming the fix when the images are not 64x64."""
    if tuple(cfg.input_shape[1:]) != (64, 64):
        raise ConfigError(f"architecture conv64 is for 64x64 images; these are {cfg.input_shape[1]}x"
                          f"{cfg.input_shape[2]} (choose conv, or bring the images to 64x64)")


class Conv64Encoder(nn.Module):
    """[x, c as constant channels] (B, C + K, 64, 64) -> 32, 32, 64, 64 channels at 32, 16, 8, 4 pixels ->
    flatten (B, 1024) -> dense ``hidden`` -> heads."""

    def __init__(self, cfg: ModelConfig, heads: tuple[str, ...]):
        super().__init__()
        check_conv64(cfg)
        act = _ACTIVATIONS[cfg.activation]
        layers: list[nn.Module] = []
        c_in = cfg.input_shape[0] + cfg.num_classes
        for c_out, k in zip(CONV64_CHANNELS, CONV64_KERNELS):
            layers += [nn.Conv2d(c_in, c_out, k, stride=2, padding=(k - 2) // 2), act()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        sizes = [c_in * 4 * 4, *cfg.hidden]
        self.trunk = mlp(sizes, cfg.activation)
        self.heads = nn.ModuleDict({name: nn.Linear(sizes[-1], cfg.latent_dim) for name in heads})
        self.input_shape = cfg.input_shape

    forward = ConvEncoder.forward  # the same steps: label planes, convolutions, flatten, trunk, heads


class Conv64Decoder(nn.Module):
    """[z, c] -> dense reversed ``hidden`` -> dense 1024 = (64, 4, 4) -> 4x4 stride-2 transposed convolutions to
    64, 32, 32 channels and then the likelihood's parameters at 8, 16, 32, 64 pixels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_conv64(cfg)
        self.cfg = cfg
        act = _ACTIVATIONS[cfg.activation]
        sizes = [cfg.latent_dim + cfg.num_classes, *reversed(cfg.hidden)]
        self.trunk = mlp(sizes, cfg.activation)
        chans = list(reversed(CONV64_CHANNELS))  # 64, 64, 32, 32
        self.project = nn.Sequential(nn.Linear(sizes[-1], chans[0] * 4 * 4), act())
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), act()]  # (h, w) -> (2h, 2w)
        self.deconvs = nn.Sequential(*layers)
        self.out = nn.ConvTranspose2d(chans[-1], cfg.input_shape[0] * _params_per_pixel(cfg), 4, stride=2, padding=1)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Bernoulli | Gaussian | DiscretizedLogistic:
        cfg = self.cfg
        lead = z.shape[:-1]
        zc = _with_label(z, c)
        h = self.project(run_mlp(self.trunk, zc.reshape(-1, zc.shape[-1])))  # (N, 1024)
        params = self.out(self.deconvs(h.view(h.shape[0], -1, 4, 4)))  # (N, 64, 4, 4) -> (N, P*C, 64, 64)
        params = params.reshape(*lead, -1, *cfg.input_shape)  # (..., P, C, H, W)
        return likelihood_from_params(cfg, params)


_ENCODERS = {"mlp": MLPEncoder, "conv": ConvEncoder, "conv64": Conv64Encoder}
_DECODERS = {"mlp": MLPDecoder, "conv": ConvDecoder, "conv64": Conv64Decoder}


def build_encoder(cfg: ModelConfig, heads: tuple[str, ...]) -> nn.Module:
    if cfg.architecture not in _ENCODERS:
        raise ValueError(f"unknown architecture {cfg.architecture!r}")
    return _ENCODERS[cfg.architecture](cfg, heads)


def build_decoder(cfg: ModelConfig) -> nn.Module:
    if cfg.architecture not in _DECODERS:
        raise ValueError(f"unknown architecture {cfg.architecture!r}")
    return _DECODERS[cfg.architecture](cfg)


def init_normal_(module: nn.Module, std: float) -> None:
    """The paper's initialisation: every weight and bias drawn from N(0, std^2)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
