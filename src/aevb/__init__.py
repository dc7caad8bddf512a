"""aevb: Variational autoencoders as in Kingma & Welling, Auto-Encoding Variational Bayes (2013).

    import aevb
    run = aevb.train(dataset="digits", epochs=50, out="runs/digits")
    run = aevb.load("runs/digits")
    aevb.evaluate(run.model, run.dataset().test.x, k=1000)
"""

from .checkpoint import Run, load
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .evaluate import evaluate
from .models import AE, VAE, build_model
from .objectives import ae_loss, elbo, iwae_bound
from .train import train

__version__ = "0.1.0"

__all__ = ["AE", "DataConfig", "ModelConfig", "Run", "RunConfig", "TrainConfig", "VAE", "ae_loss", "build_model",
           "elbo", "evaluate", "iwae_bound", "load", "train", "__version__"]
