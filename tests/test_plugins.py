"""Model families as plugins: a family registered from this file alone, your own networks, capabilities
instead of family names, no import cycle, and run directories written before families existed.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import aevb
from aevb.config import ModelConfig, RunConfig
from aevb.models import Capabilities, Family, LatentVariableModel, build_model, register
from aevb.models.registry import FAMILIES
from aevb.models.vae import VAE
from aevb.data import load_dataset
from aevb.runconfig import apply_overrides, default_config
from aevb.nets import NetworkError, UntrustedCode, network_spec

SRC = Path(__file__).resolve().parents[1] / "src" / "aevb"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# --- a toy family, defined here and nowhere in the library -------------------------------------------


class ShiftedNormal(nn.Module):
    """p(z) = N(loc, I) with a learned loc: a prior with parameters and no closed-form KL registered."""

    def __init__(self, latent_dim: int, shift: float):
        super().__init__()
        self.loc = nn.Parameter(torch.full((latent_dim,), shift))

    def log_prob(self, z: Tensor) -> Tensor:
        return (-0.5 * (math.log(2 * math.pi) + (z - self.loc) ** 2)).sum(-1)

    def sample(self, n, generator=None, device=None, dtype=None) -> Tensor:
        eps = torch.randn(n, self.loc.shape[0], generator=generator, device=device, dtype=dtype)
        return self.loc.to(eps.device) + eps


class IsotropicGaussian:
    """q(z|x) = N(mu, s^2 I) with one scale s for every dimension and image."""

    def __init__(self, mu: Tensor, log_scale: Tensor):
        self.mean, self.log_scale = mu, log_scale

    @property
    def std(self) -> Tensor:
        return self.log_scale.exp().expand_as(self.mean)

    def rsample(self, n=None, generator=None) -> Tensor:
        shape = self.mean.shape if n is None else (n, *self.mean.shape)
        return self.mean + self.log_scale.exp() * torch.randn(shape, generator=generator, device=self.mean.device)

    def log_prob(self, z: Tensor) -> Tensor:
        s = self.log_scale.exp()
        return (-0.5 * (math.log(2 * math.pi) + ((z - self.mean) / s) ** 2) - self.log_scale).sum(-1)

    def rsample_with_log_prob(self, n=None, generator=None):
        z = self.rsample(n, generator)
        return z, self.log_prob(z)


class IsotropicPosterior(nn.Module):
    heads = ("mu",)

    def __init__(self):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(-1.0))

    def forward(self, out: dict[str, Tensor]) -> IsotropicGaussian:
        return IsotropicGaussian(out["mu"], self.log_scale)


class ToyEncoder(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int):
        super().__init__()
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.net = nn.Linear(data_dim, latent_dim)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"mu": self.net(x.flatten(1))}


class ToyDecoder(nn.Module):
    """Bernoulli logits shaped (..., C, H, W), as the contract asks."""

    def __init__(self, latent_dim: int, shape: list[int]):
        super().__init__()
        self.latent_dim, self.shape = latent_dim, list(shape)
        self.net = nn.Sequential(nn.Linear(latent_dim, 32), nn.Tanh(), nn.Linear(32, math.prod(shape)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(*z.shape[:-1], *self.shape)


@dataclass
class ToyConfig(ModelConfig):
    prior_shift: float = 0.5  # a setting of this family's own


class ToyModel(LatentVariableModel):
    def __init__(self, config: ToyConfig, encoder=None, decoder=None):
        encoder = encoder or ToyEncoder(config.data_dim, config.latent_dim)
        decoder = decoder or ToyDecoder(config.latent_dim, list(config.input_shape))
        super().__init__(config, heads=("mu",), encoder=encoder, decoder=decoder)
        self.posterior = IsotropicPosterior()
        self.prior = ShiftedNormal(config.latent_dim, config.prior_shift)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(has_prior=True, has_posterior=True, conditional=False, objectives=("elbo", "iwae"),
                            latent_shape=(self.config.latent_dim,), code_name="toy means")

    def encode(self, x, y=None):
        return self.posterior(self.encoder_out(x, y))


register(Family("toy", build=ToyModel, config=ToyConfig, summary="a family defined in a test file"))


def test_a_family_from_this_file_trains_evaluates_plots_reports_and_serves(tmp_path):
    from aevb.report import write_report
    from aevb.serve.app import Explorer
    from aevb.viz import PLOT_KINDS, make_plot

    run = aevb.train(dataset="digits", model="toy", latent_dim=2, prior_shift=0.25, epochs=3, batch_size=50,
                     lr=3e-3, out=tmp_path / "toy", progress=False, device="cpu")
    assert isinstance(run.config.model, ToyConfig) and run.config.model.prior_shift == 0.25
    assert json.loads((tmp_path / "toy" / "config.json").read_text())["model"]["family"] == "toy"
    lines = run.metrics
    assert len(lines) == 3 and lines[-1]["valid_elbo"] > lines[0]["valid_elbo"]  # it learns

    x = run.dataset().test.x[:60]
    res = aevb.evaluate(run.model, x, k=50, seed=0)
    # The ELBO is a lower bound on the k-sample estimate (on average), both finite, for this family's q and p.
    assert math.isfinite(res["log_likelihood"]) and res["log_likelihood"] >= res["elbo"] - 0.5
    assert res["latent_dim"] == 2 and "kl_dim_0" not in res  # no closed-form KL per dimension for this pair
    # The prior's learned parameter is part of the saved state.
    reloaded = aevb.load(tmp_path / "toy")
    assert torch.equal(reloaded.model.prior.loc, run.model.prior.loc)
    assert torch.equal(reloaded.model.posterior.log_scale, run.model.posterior.log_scale)

    for kind in PLOT_KINDS:
        path = make_plot(run, kind, tmp_path / "plots" / f"{kind}.png")
        assert path.stat().st_size > 1000, kind
    html = write_report(run).read_text()
    assert "toy means" in html or "fig-scatter" in html
    ex = Explorer(run)
    png = ex.decode_png(torch.zeros(2))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert ex.info()["family"] == "toy"


def test_a_family_that_declares_no_posterior_gets_no_log_likelihood():
    torch.manual_seed(0)
    ae = build_model(ModelConfig(input_shape=(1, 8, 8), hidden=(8,), latent_dim=2, family="ae"))
    res = aevb.evaluate(ae, torch.rand(10, 1, 8, 8), k=10)
    assert "log_likelihood" not in res and "reconstruction" in res and "elbo" not in res


def test_an_objective_the_family_does_not_support_is_refused_in_one_line(tmp_path):
    with pytest.raises(aevb.config.ConfigError, match="objective 'iwae' does not apply to the ae model"):
        aevb.train(dataset="digits", model="ae", objective="iwae", epochs=1, out=tmp_path / "r", progress=False)


def test_an_unknown_family_names_the_known_ones():
    with pytest.raises(aevb.config.ConfigError, match="unknown model family 'nope'; known: vae, ae"):
        build_model(ModelConfig(family="nope"))


def test_a_setting_of_another_family_names_that_family():
    cfg = default_config("digits")
    with pytest.raises(aevb.config.ConfigError, match=r"'latent_layers' \(--latent-layers\) belongs to "
                                                      r"model='hvae' \(--model hvae\), not to the 'vae' family"):
        apply_overrides(cfg, {"latent_layers": 3})
    with pytest.raises(aevb.config.ConfigError, match=r"^unknown setting 'bogus'$"):
        apply_overrides(cfg, {"bogus": 1})
    assert apply_overrides(cfg, {"model": "hvae", "latent_layers": 3}).model.latent_layers == 3


# --- capabilities, not names; no import cycle --------------------------------------------------------


def _py_files(root: Path):
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_outside_models_compares_a_family_name():
    names = set(FAMILIES) | {"vae", "ae", "hvae"}
    found = []
    for path in _py_files(SRC):
        if "models" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            literals = [c.value for o in operands for c in ([o] if isinstance(o, ast.Constant) else
                        getattr(o, "elts", [])) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            attrs = [o.attr for o in operands if isinstance(o, ast.Attribute)]
            if names & set(literals) or ({"family", "kind"} & set(attrs) and literals):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"model families compared by name outside aevb/models: {found}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_package_has_no_import_cycle():
    """Module-level imports only (an import inside a function is deliberately deferred)."""
    modules = {_module_name(p): p for p in _py_files(SRC)}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.parse(path.read_text()).body:  # top level only
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


# --- your own networks -------------------------------------------------------------------------------


class MyEncoder(nn.Module):
    """A user's encoder: the VAE's two heads from a small convolution."""

    def __init__(self, latent_dim: int, width: int = 6):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.mu = nn.Linear(width * 64, latent_dim)
        self.log_var = nn.Linear(width * 64, latent_dim)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.relu(self.conv(x)).flatten(1)
        return {"mu": self.mu(h), "log_var": self.log_var(h)}


class MyDecoder(nn.Module):
    def __init__(self, latent_dim: int, hidden: int = 24):
        super().__init__()
        self.latent_dim, self.hidden = latent_dim, hidden
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 64))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(*z.shape[:-1], 1, 8, 8)  # Bernoulli logits


class FlatDecoder(nn.Module):
    """Returns (..., 64) instead of (..., 1, 8, 8)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.lin = nn.Linear(latent_dim, 64)

    def forward(self, z):
        return self.lin(z)


class NoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 2)

    def forward(self, x):
        return {"mean": self.lin(x.flatten(1))}


def test_own_networks_train_save_and_load_only_when_trusted(tmp_path):
    run = aevb.train(dataset="digits", binarize="dynamic", latent_dim=2, epochs=2, batch_size=50, out=tmp_path / "own",
                     progress=False, device="cpu", encoder=MyEncoder(2, width=5), decoder=MyDecoder(2))
    spec = json.loads((tmp_path / "own" / "config.json").read_text())["model"]
    assert spec["encoder"] == {"class": f"{__name__}:MyEncoder", "args": {"latent_dim": 2, "width": 5}}
    assert spec["decoder"] == {"class": f"{__name__}:MyDecoder", "args": {"latent_dim": 2, "hidden": 24}}
    assert isinstance(run.model.encoder, MyEncoder) and run.model.encoder.width == 5

    with pytest.raises(UntrustedCode, match=rf"your own class {__name__}:MyEncoder.*trust_code=True"):
        aevb.load(tmp_path / "own")
    x = run.dataset().test.x[:8]
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    for loaded in (aevb.load(tmp_path / "own", trust_code=True),
                   aevb.load(tmp_path / "own", networks={"encoder": MyEncoder, "decoder": MyDecoder})):
        assert torch.equal(loaded.model.embed(x), run.model.embed(x))
        assert torch.equal(loaded.model.decode(z).mean, run.model.decode(z).mean)
    resumed = aevb.train(out=tmp_path / "own", resume=True, epochs=3, progress=False, trust_code=True)
    assert len(resumed.metrics) == 3


def test_a_network_breaking_the_contract_is_named_before_training(tmp_path):
    with pytest.raises(NetworkError, match=r"the encoder's output has no 'mu'; the vae model reads 'mu', 'log_var'"):
        aevb.train(dataset="digits", latent_dim=2, epochs=1, out=tmp_path / "bad", progress=False, encoder=NoHeads())
    with pytest.raises(NetworkError, match=r"decoder returned a tensor shaped \(2, 64\)"):
        aevb.train(dataset="digits", latent_dim=2, epochs=1, out=tmp_path / "bad2", progress=False,
                   decoder=FlatDecoder(2))


def test_a_network_whose_arguments_cannot_be_recorded_says_how_to_fix_it():
    class Forgetful(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.lin = nn.Linear(width, width)

    with pytest.raises(NetworkError, match=r"takes 'width' but the instance has no attribute of that name"):
        network_spec(Forgetful(3))


# --- run directories from before model families ------------------------------------------------------


@pytest.mark.parametrize("family", ["vae", "ae"])
def test_a_format_1_run_loads_and_evaluates_to_the_same_numbers(tmp_path, family):
    """Written by aevb at commit 4634ee5 (before aevb.models): config.json format 1 with ``kind``."""
    from aevb.evaluate import evaluate

    expected = json.loads((FIXTURES / "format1-expected.json").read_text())[family]
    saved = json.loads((FIXTURES / f"format1-{family}" / "config.json").read_text())
    assert saved["format_version"] == 1 and saved["model"]["kind"] == family
    run = aevb.load(FIXTURES / f"format1-{family}")
    assert run.config.model.family == family and run.config.format_version == 2
    x = run.dataset().test.x[:50]
    res = evaluate(run.model, x, k=20, seed=0)
    z = torch.linspace(-1, 1, 6).view(3, 2)
    with torch.no_grad():
        res["decoded_mean_sum"] = float(run.model.decode(z).mean.double().sum())
        res["embed_sum"] = float(run.model.embed(x).double().sum())
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    # migrated on load, and written back in the new format when saved again
    again = RunConfig.from_json(run.config.to_json())
    assert again == run.config


def test_the_cli_loads_own_networks_only_with_trust_code(tmp_path, capsys):
    from tests.vizmodels import aevb as run_aevb

    aevb.train(dataset="digits", latent_dim=2, epochs=1, batch_size=50, out=tmp_path / "own", progress=False,
               device="cpu", encoder=MyEncoder(2), decoder=MyDecoder(2))
    rc, _, err = run_aevb(capsys, "sample", tmp_path / "own", "--out", tmp_path / "s.png")
    assert rc == 1 and err.strip() == (f"aevb: error: this run's encoder is your own class {__name__}:MyEncoder; "
                                       "rebuilding it imports and runs that code: pass --trust-code if you trust it")
    rc, out, err = run_aevb(capsys, "sample", tmp_path / "own", "--out", tmp_path / "s.png", "--trust-code")
    assert rc == 0 and (tmp_path / "s.png").stat().st_size > 1000, err


# --- a family that trains parameters of its own (the trainer's hooks) -----------------------------


class CriticVAE(VAE):
    """A VAE with a linear critic on its codes, trained by its own Adam in ``after_step`` (as FactorVAE's
    discriminator is), and an average of the decoder's weights held in a buffer (as an EMA is)."""

    def __init__(self, config, encoder=None, decoder=None):
        super().__init__(config, encoder, decoder)
        self.critic = nn.Linear(config.latent_dim, 1)
        first = next(self.decoder.parameters())
        self.register_buffer("decoder_average", first.detach().clone())
        self._aux: dict[str, torch.optim.Optimizer] = {}
        self.calls = 0

    def optimized_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("critic.")]

    def auxiliary_optimizers(self):
        if not self._aux:
            self._aux["critic"] = torch.optim.Adam(self.critic.parameters(), lr=0.2)
        return self._aux

    def after_step(self, x, y, generator, skipped):
        self.calls += 1
        with torch.no_grad():
            z = self.embed(x)
            self.decoder_average.lerp_(next(self.decoder.parameters()), 0.1)
        loss = (self.critic(z).squeeze(-1) - 1.0).pow(2).mean()  # learn to output 1 on every code
        opt = self._aux["critic"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"critic_loss": loss.detach()}


register(Family("critic-vae", build=CriticVAE, summary="a family with its own optimizer (a test)"))


def test_a_family_trains_its_own_parameters_and_resumes_them_exactly(tmp_path):
    from aevb.train import Trainer

    cfg = apply_overrides(default_config("digits"), {"model": "critic-vae", "hidden": (16,), "latent_dim": 2,
                                                      "batch_size": 50, "subset": 200, "epochs": 2, "lr": 0.01})
    data = load_dataset(cfg.data)
    full = Trainer(cfg, tmp_path / "full", dataset=data, progress=False)
    trained = {id(p) for g in full.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in trained for p in full.model.critic.parameters())  # not the objective's
    assert len(trained) == len(list(full.model.parameters())) - 2
    full.run()
    assert full.model.calls == 8  # once per step: 2 epochs of 4
    lines = [json.loads(s) for s in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_critic_loss"] < lines[0]["train_critic_loss"]  # the critic learns
    # Stopped after 5 steps and resumed in a fresh trainer: the critic, its Adam moments and the buffer
    # continue exactly (a critic restarted from scratch would differ).
    Trainer(cfg, tmp_path / "cut", dataset=data, progress=False).run(stop_after_steps=5)
    resumed = Trainer(cfg, tmp_path / "cut", dataset=data, progress=False)
    resumed.restore()
    assert resumed.auxiliary["critic"].state_dict()["state"]  # Adam's moments came back
    resumed.run()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
