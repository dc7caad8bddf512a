"""aevb: Variational autoencoders as in Kingma & Welling, Auto-Encoding Variational Bayes (2013).

    import aevb
    run = aevb.train(dataset="digits", epochs=50, out="runs/digits")
    run = aevb.load("runs/digits")
    aevb.evaluate(run.model, run.dataset().test.x, k=1000)

The names below are imported on first use (PEP 562), so that ``import aevb`` and
``aevb --help`` do not pay for torch.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

__all__ = ["AE", "DataConfig", "ModelConfig", "Run", "RunConfig", "TrainConfig", "VAE", "ae_loss", "build_model",
           "elbo", "evaluate", "iwae_bound", "load", "train", "__version__"]

_SUBMODULE = {  # public name -> the submodule that defines it
    "Run": "run", "load": "run",
    "DataConfig": "config", "ModelConfig": "config", "RunConfig": "config", "TrainConfig": "config",
    "evaluate": "evaluate",
    "AE": "models", "VAE": "models", "build_model": "models",
    "ae_loss": "objectives", "elbo": "objectives", "iwae_bound": "objectives",
    "train": "train",
}


def __getattr__(name: str):
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE[name]}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``aevb.train`` and ``aevb.evaluate`` are functions named like their submodules. Importing a
    submodule binds it on the package (``import aevb.train`` sets ``aevb.train``); this keeps the
    function there instead, whoever imports the submodule first."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _SUBMODULE.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
