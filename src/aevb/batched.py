"""Several independent MLP VAEs trained in one step: stacked activations, one optimizer call per model.

Sweeps (the paper's figure 2: five latent sizes, three trial step sizes each) train many small
models that differ only in their latent size, step size or seed. Trained one after the other,
each step of each model pays the per-step costs (operator launches, autograd bookkeeping, the
optimizer's loop over tensors) on top of its arithmetic. ``StackedVAE`` holds K such models and
trains them in one step:

- the layers whose shapes every model shares (the encoder's hidden layers, the decoder's hidden
  and output layers) run as one autograd node for all K (``_StackedDense``); their activations are
  (K, N, width) tensors, so every elementwise operation (activation derivatives, the likelihood
  and its gradient) is one call for all K models. The weights stay each model's own tensors
  (copying K weight gradients into one (K, out, in) tensor every step cost more than it saved);
- the layers that touch the latent code (the encoder's ``mu`` and ``log_var`` heads, the decoder's
  first layer) keep each model's own ``nn.Linear`` (latent sizes may differ: no padding), and the
  latent part of the objective (reparameterization, KL, log q) runs per model through the same
  distribution objects and ``objectives.kl_terms`` as a single model's step;
- every GEMM is the same oneDNN call, on the same shapes, as ``aevb.nets.dense`` makes for one
  model, and each model draws its noise from its own generator in the same order as alone.

So each model's weights after N steps are the ones training it alone gives (``reproduce.common.train_loop``
with ``fused_optimizer``), up to
float32 rounding (the tests check 1e-5 after many steps; on the CPUs we measured they were equal to
the bit). Which models stack: ``why_not_stackable`` (plain MLP VAEs of the built-in networks, one
stochastic layer, Gaussian posterior, N(0, I) prior, no labels or flows, float32, on a CPU with
oneDNN's fused linear); anything else trains alone.

Objectives: the SGVB ELBO with estimator A or B and L samples (``stacked_elbo``, the same loss as
``objectives.elbo`` with beta 1 and no free bits) and wake-sleep (``stacked_wake_sleep``, the loss of
``wake_sleep.wake_sleep_step_loss``). Optimizers: Adagrad and Adam, each model with its own step size,
applied with PyTorch's fused kernels per model (``torch._fused_adagrad_`` / ``torch._fused_adam_``,
what ``torch.optim.Adagrad(..., fused=True)`` and ``Adam(..., fused=True)`` call), so that a model's
update is the one its own fused optimizer makes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .distributions import Bernoulli, DiagonalGaussian, DiscretizedLogistic, Gaussian
from .nets import (_ACTIVATIONS, _POST_OPS, ONEDNN, MLPDecoder, MLPEncoder, dense, layer_pairs, make_likelihood,
                   onednn_linear_works)
from .objectives import kl_terms

_lin = None  # torch.ops.mkldnn._linear_pointwise, bound at first use


def _linear(x: Tensor, w: Tensor, b: Tensor | None, post_op: str) -> Tensor:
    global _lin
    if _lin is None:
        _lin = torch.ops.mkldnn._linear_pointwise
    return _lin(x, w, b, post_op, [], "")


# --- which models stack ----------------------------------------------------------------------------

_SHARED_CONFIG = ("input_shape", "hidden", "activation", "likelihood", "decoder_mean", "fixed_sigma",
                  "log_var_min", "log_var_max")


def why_not_stackable(models: Sequence[nn.Module]) -> str | None:
    """None when ``models`` can train in one ``StackedVAE`` step exactly as alone; else the reason."""
    from .models.vae import VAE

    if not models:
        return "no models"
    if not (ONEDNN and onednn_linear_works()):
        return "oneDNN's fused linear is not available here (or AEVB_ONEDNN=0)"
    if not fused_kernels_work():
        return "PyTorch's fused Adagrad and Adam kernels do not run on this CPU"
    first = models[0].config
    for m in models:
        cfg = m.config
        if type(m) is not VAE:
            return f"{type(m).__name__} is not the VAE family's model"
        if not (type(m.encoder) is MLPEncoder and type(m.decoder) is MLPDecoder):
            return "only the built-in MLP networks stack"
        if cfg.num_classes or cfg.flow != "none" or cfg.prior != "standard" or cfg.stochastic_layers != 1:
            return "only unconditional VAEs with a Gaussian posterior, N(0, I) prior and one stochastic layer stack"
        if not cfg.hidden:
            return "a model without hidden layers has nothing to stack"
        if _POST_OPS.get(_ACTIVATIONS[cfg.activation]) is None:
            return f"activation {cfg.activation} has no fused oneDNN form"
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in m.parameters()):
            return "only float32 models on the CPU stack"
        for key in _SHARED_CONFIG:
            if getattr(cfg, key) != getattr(first, key):
                return f"the models differ in {key}: stack only models of one architecture"
    return None


# --- a stacked dense layer ---------------------------------------------------------------------------

class _StackedDense(torch.autograd.Function):
    """y[k] = act(x[k] W_k^T + b_k) for K models, each through the oneDNN call ``nets.dense`` makes.

    x: (K, N, in), or (N, in) read by every model; W_k (out, in) and b_k (out,) each model's own
    parameters (not stacked: their gradients come back one per model, never copied into a (K, ...)
    tensor); y (K, N, out), one tensor so that what follows is one call for all K.
    """

    @staticmethod
    def forward(ctx, x: Tensor, post_op: str, *params: Tensor) -> Tensor:
        k_models = len(params) // 2
        weights, biases = params[:k_models], params[k_models:]
        shared = x.dim() == 2
        y = torch.stack([_linear(x if shared else x[k], w, b, post_op)
                         for k, (w, b) in enumerate(zip(weights, biases))])  # (K, N, out)
        ctx.save_for_backward(x, y, *weights)
        ctx.post_op = post_op
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, y, *weights = ctx.saved_tensors
        op = ctx.post_op
        if op == "relu":  # the activation's derivative, as _OneDNNDense.backward computes it
            da = dy.masked_fill(y <= 0, 0)
        elif op == "tanh":
            da = torch.addcmul(dy, dy, y * y, value=-1)
        elif op == "sigmoid":
            da = dy * (y - y * y)
        else:
            da = dy
        shared = x.dim() == 2
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.stack([_linear(da[k], w.t(), None, "none") for k, w in enumerate(weights)])
        dws = [_linear(da[k].t(), (x if shared else x[k]).t(), None, "none") for k in range(len(weights))]
        dbs = [da[k].sum(0) for k in range(len(weights))]
        return (dx, None, *dws, *dbs)


@dataclass
class _Layer:
    """One layer of every model: their own ``nn.Linear`` modules and the fused activation's name."""

    linears: list[nn.Linear]
    post_op: str

    def __call__(self, x: Tensor) -> Tensor:
        params = [lin.weight for lin in self.linears] + [lin.bias for lin in self.linears]
        return _StackedDense.apply(x, self.post_op, *params)


def _stack_layer(linears: Sequence[nn.Linear], activation: nn.Module | None) -> _Layer:
    return _Layer(list(linears), _POST_OPS[type(activation)])


# --- the stacked models --------------------------------------------------------------------------

class StackedVAE:
    """K MLP VAEs (``why_not_stackable`` is None) run together. The parameters stay the models' own
    (trained in place); the layers every model has at the same shape run as one ``_StackedDense``."""

    def __init__(self, models: Sequence[nn.Module]):
        reason = why_not_stackable(models)
        if reason:
            raise ValueError(f"these models cannot train stacked: {reason}")
        self.models = list(models)
        self.config = models[0].config
        enc_pairs = [layer_pairs(m.encoder.trunk) for m in models]
        dec_pairs = [m.decoder.hidden_layers() for m in models]
        self.encoder = [_stack_layer([p[i][0] for p in enc_pairs], enc_pairs[0][i][1])
                        for i in range(len(enc_pairs[0]))]
        self.decoder = [_stack_layer([p[i][0] for p in dec_pairs], dec_pairs[0][i][1])
                        for i in range(1, len(dec_pairs[0]))]  # the first reads z: each model's own
        self.out_mean = _stack_layer([m.decoder.mean for m in models], None)
        second = models[0].decoder.log_var is not None
        self.out_second = _stack_layer([m.decoder.log_var for m in models], None) if second else None

    def __len__(self) -> int:
        return len(self.models)

    def parameters(self) -> list[Tensor]:
        return [p for m in self.models for p in m.parameters()]

    def sync(self) -> list[nn.Module]:
        """The models (their parameters are trained in place: nothing to copy back)."""
        return self.models

    # -- the networks ----------------------------------------------------------------------------

    def hidden(self, x: Tensor) -> list[Tensor]:
        """The encoder's last hidden layer for each model: x (B, D) shared by all, or (K, B, D) -> K x (B, H)."""
        h = x
        for layer in self.encoder:
            h = layer(h)
        return list(h.unbind(0))

    def posteriors(self, x: Tensor) -> list[DiagonalGaussian]:
        """q_k(z|x) for each model k (its own heads, as ``VAE.encode`` builds it)."""
        out = []
        for m, h in zip(self.models, self.hidden(x)):
            heads = {name: dense(h, head) for name, head in m.encoder.heads.items()}
            out.append(m.posterior(heads))
        return out

    def likelihood(self, zs: Sequence[Tensor]):
        """p(x|z) of all models at once: z_k (..., Z_k) per model, the same leading shape; the
        likelihood's parameters are (K, ..., C, H, W)."""
        firsts = [m.decoder.hidden_layers()[0] for m in self.models]
        lead = zs[0].shape[:-1]
        h = torch.stack([dense(z.reshape(-1, z.shape[-1]), lin, act) for z, (lin, act) in zip(zs, firsts)])
        for layer in self.decoder:
            h = layer(h)  # (K, N, width)
        shape = (len(self), *lead, *self.config.input_shape)
        mean = self.out_mean(h).view(shape)
        second = self.out_second(h).view(shape) if self.out_second is not None else None
        return make_likelihood(self.config, mean, second)

    def split(self, lik: Bernoulli | Gaussian | DiscretizedLogistic) -> list:
        """The per-model likelihoods of a stacked one (model k's slice of its parameters)."""
        ks = range(len(self))
        if isinstance(lik, Bernoulli):
            return [Bernoulli(lik.logits[k], lik.event_ndim) for k in ks]
        if isinstance(lik, Gaussian):
            return [Gaussian(lik.mean[k], lik.log_var[k], lik.event_ndim, lik.log_var_bounds) for k in ks]
        return [DiscretizedLogistic(lik._mean[k], lik.log_scale[k], lik.event_ndim) for k in ks]  # clamped already


def _as_event(stack: StackedVAE, x: Tensor, shared: bool, sample_axis: bool) -> Tensor:
    """x shaped to score against likelihood parameters (K, [L,] B, C, H, W): (B, C, H, W) when every
    model reads it, else (K, [1,] B, C, H, W)."""
    shape = tuple(stack.config.input_shape)
    if shared:
        return x.reshape(-1, *shape)
    return x.reshape(len(stack), *((1,) if sample_axis else ()), -1, *shape)


# --- objectives -----------------------------------------------------------------------------------

def stacked_elbo(stack: StackedVAE, x: Tensor, generators: Sequence[torch.Generator | None], samples: int = 1,
                 kl: str = "analytic", shared: bool = True) -> Tensor:
    """Each model's ``objectives.elbo`` loss (beta 1, no free bits), shape (K,): x (B, ...) read by every
    model (``shared``) or (K, B, ...), one batch per model; model k's noise from ``generators[k]``."""
    xs = x.reshape(x.shape[0], -1) if shared else x.reshape(len(stack), x.shape[1], -1)
    qs = stack.posteriors(xs)
    draws = [q.rsample_with_log_prob(samples, generator=g) for q, g in zip(qs, generators)]  # (L, B, Z_k), (L, B)
    zs = [z for z, _ in draws]
    reconstruction = stack.likelihood(zs).log_prob(_as_event(stack, x, shared, True)).mean(1)  # (K, L, B) -> (K, B)
    # the KL after the decoder, as objectives.elbo orders them: z's gradient then sums in the same order
    kls = [kl_terms(q, m.prior, z, log_q, kl)[0] for m, q, (z, log_q) in zip(stack.models, qs, draws)]  # (B,)
    return -reconstruction.mean(-1) + torch.stack([k.mean() for k in kls])


def stacked_wake_sleep(stack: StackedVAE, x: Tensor, generators: Sequence[torch.Generator | None],
                       shared: bool = True, **_: object) -> Tensor:
    """Each model's ``wake_sleep.wake_sleep_step_loss`` (wake + sleep), shape (K,); the draws of model k
    (wake z ~ q, dream z ~ p(z), dream x~ ~ p(x|z)) from ``generators[k]`` in the order alone makes them."""
    n = x.shape[0] if shared else x.shape[1]
    xs = x.reshape(n, -1) if shared else x.reshape(len(stack), n, -1)
    with torch.no_grad():  # wake: z ~ q(z|x), held fixed
        z_wake = [q.rsample(generator=g) for q, g in zip(stack.posteriors(xs), generators)]  # (B, Z_k)
    log_joint = stack.likelihood(z_wake).log_prob(_as_event(stack, x, shared, False))  # (K, B)
    log_joint = log_joint + torch.stack([m.prior.log_prob(z) for m, z in zip(stack.models, z_wake)])
    with torch.no_grad():  # sleep: dreams (z, x~) from the generative model
        z_dream = [m.prior.sample(n, generator=g, device=x.device) for m, g in zip(stack.models, generators)]
        x_dream = torch.stack([lik.sample(generator=g) for lik, g in
                               zip(stack.split(stack.likelihood(z_dream)), generators)])  # (K, n, C, H, W)
    qs = stack.posteriors(x_dream.reshape(len(stack), n, -1))
    log_q = torch.stack([q.log_prob(z) for q, z in zip(qs, z_dream)])  # (K, n)
    return -log_joint.mean(-1) - log_q.mean(-1)


STACKED_OBJECTIVES: dict[str, Callable[..., Tensor]] = {"elbo": stacked_elbo, "wake-sleep": stacked_wake_sleep}


# --- optimizers ------------------------------------------------------------------------------------

class StackedOptimizer:
    """Adagrad or Adam for every model of a stack, model k with step size ``lrs[k]``: one fused kernel
    call per model over its parameters, the call ``torch.optim.Adagrad/Adam(model.parameters(),
    lr=lrs[k], fused=True, **kw)`` makes for it alone."""

    def __init__(self, stack: StackedVAE, name: str, lrs: Sequence[float], weight_decay: float = 0.0,
                 eps: float | None = None, betas: tuple[float, float] = (0.9, 0.999)):
        if name not in ("adagrad", "adam"):
            raise ValueError(f"the stacked optimizer is adagrad or adam; got {name!r}")
        if len(lrs) != len(stack):
            raise ValueError(f"one step size per model: {len(stack)} models, {len(lrs)} step sizes")
        self.stack, self.name, self.lrs = stack, name, [float(lr) for lr in lrs]
        self.weight_decay, self.betas = weight_decay, betas
        self.eps = eps if eps is not None else (1e-10 if name == "adagrad" else 1e-8)
        self.groups = [list(m.parameters()) for m in stack.models]
        self.params = [p for g in self.groups for p in g]
        self.steps = [[torch.zeros(()) for _ in g] for g in self.groups]
        self.moments = [[[torch.zeros_like(p) for p in g] for g in self.groups]
                        for _ in range(1 if name == "adagrad" else 2)]

    def step(self, grads: Sequence[Tensor]) -> None:
        """Apply ``grads``, one per tensor of ``self.params``, in order."""
        start = 0
        with torch.no_grad():
            for k, (params, lr) in enumerate(zip(self.groups, self.lrs)):
                g = list(grads[start : start + len(params)])
                start += len(params)
                torch._foreach_add_(self.steps[k], 1)
                if self.name == "adagrad":
                    torch._fused_adagrad_(params, g, self.moments[0][k], self.steps[k], lr=lr, lr_decay=0.0,
                                          weight_decay=self.weight_decay, eps=self.eps, maximize=False,
                                          grad_scale=None, found_inf=None)
                else:
                    torch._fused_adam_(params, g, self.moments[0][k], self.moments[1][k], [], self.steps[k],
                                       amsgrad=False, lr=lr, beta1=self.betas[0], beta2=self.betas[1],
                                       weight_decay=self.weight_decay, eps=self.eps, maximize=False,
                                       grad_scale=None, found_inf=None)


@functools.cache
def fused_kernels_work() -> bool:
    """Whether torch.optim's fused Adagrad and Adam step float32 CPU tensors here."""
    try:
        for cls in (torch.optim.Adagrad, torch.optim.Adam):
            p = torch.zeros(2, requires_grad=True)
            p.grad = torch.ones(2)
            cls([p], lr=0.1, fused=True).step()
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def fused_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """What a model trained alone uses for the same update as ``StackedOptimizer`` (PyTorch's fused
    kernel; the plain one where no fused kernel runs, and then nothing stacks)."""
    cls = torch.optim.Adagrad if name == "adagrad" else torch.optim.Adam
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return cls(model.parameters(), lr=lr, weight_decay=weight_decay, fused=on_cpu and fused_kernels_work())


# --- the loop --------------------------------------------------------------------------------------

def train_stacked(stack: StackedVAE, x_train: Tensor, objective: str, optimizer: StackedOptimizer, steps: int,
                  batch_size: int, record_at: Iterable[int] = (), on_record: Callable[[int], None] | None = None,
                  seed: int = 0, samples: int = 1, kl: str = "analytic", dynamic_binarize: bool = False) -> None:
    """``reproduce.common.train_loop`` for every model of the stack at once, all with ``seed``: the same
    data order (so one batch is read by every model) and, per model, the noise generator it would use
    alone. ``on_record(step)`` at ``record_at``, after ``stack.sync()``."""
    loss_fn = STACKED_OBJECTIVES[objective]
    n = len(x_train)
    order = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    noises = [torch.Generator().manual_seed(seed + 1) for _ in range(len(stack))]
    params = optimizer.params
    record = set(record_at)
    perm, pos = None, n
    for m in stack.models:
        m.train()
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=order), 0
        x = x_train[perm[pos : pos + batch_size]]
        pos += batch_size
        shared = True
        if dynamic_binarize:  # each model's own draw, as alone
            x, shared = torch.stack([torch.bernoulli(x, generator=g) for g in noises]), False
        losses = loss_fn(stack, x, noises, samples=samples, kl=kl, shared=shared)
        grads = torch.autograd.grad(losses.sum(), params)
        optimizer.step(grads)
        if step in record and on_record is not None:
            stack.sync()
            for m in stack.models:
                m.eval()
            on_record(step)
            for m in stack.models:
                m.train()
    stack.sync()
