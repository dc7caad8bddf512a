"""aevb's trainer against the pytorch/examples VAE recipe, side by side in one process.

Same model (784-400-20 relu MLP, Bernoulli decoder), same data (MNIST, all 60,000
training images, dynamically binarized), same budget (Adam 1e-3, batch 128, N epochs).
Epochs alternate between the two systems so that machine noise hits both alike.
The recipe is written as pytorch/examples/vae/main.py writes it: a per-item Dataset,
a DataLoader with shuffle, `.item()` on every step. Both are scored on the same
binarized test set (aevb's fixed-seed draw); aevb's model also gets the k-sample bound.

    python benchmarks/mnist_vs_recipe.py --epochs 10 --k 1000 --json docs/bench-mnist-vs-recipe.json
    python benchmarks/mnist_vs_recipe.py --only aevb --epochs 2   # peak memory of aevb alone
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import torch.nn.functional as F
from torch import nn

from aevb.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from aevb.data import load_dataset
from aevb.evaluate import evaluate, evaluate_elbo
from aevb.train import Trainer


# --- the recipe, as pytorch/examples writes it ----------------------------------------------
class RecipeVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def recipe_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())  # Appendix B of the paper
    return bce + kld


class BinarizedMNIST(torch.utils.data.Dataset):
    """Per-item access, as torchvision's MNIST + ToTensor gives, with dynamic binarization."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return torch.bernoulli(self.images[i]), 0


def recipe_epoch(model, optimizer, loader) -> float:
    model.train()
    train_loss = 0.0
    for data, _ in loader:
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = recipe_loss(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    return train_loss / len(loader.dataset)


@torch.no_grad()
def recipe_test_elbo(model, x: torch.Tensor) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(x), 1000):
        data = x[i : i + 1000]
        recon, mu, logvar = model(data)
        total += recipe_loss(recon, data, mu, logvar).item()
    return -total / len(x)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(result: dict, path: Path | None) -> None:
    """Print the result as JSON and, when ``path`` is given, also write it there."""
    text = json.dumps(result, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--k", type=int, default=1000, help="importance samples for aevb's log p(x) bound (0: skip)")
    ap.add_argument("--only", choices=["both", "aevb", "recipe"], default="both")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    torch.manual_seed(0)

    cfg = RunConfig(model=ModelConfig(input_shape=(1, 28, 28), hidden=(400,), activation="relu", latent_dim=20),
                    data=DataConfig(dataset="mnist", binarize="dynamic", valid_size=0),
                    train=TrainConfig(epochs=args.epochs, batch_size=128, optimizer="adam", lr=1e-3, seed=0,
                                      device="cpu"))
    data = load_dataset(cfg.data)
    test_x = data.test.x  # binarized once with a fixed seed: both systems score on the same images
    result: dict = {"machine": {"cores": torch.get_num_threads(), "torch": torch.__version__,
                                "python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
                    "epochs": args.epochs, "train_images": len(data.train)}

    with TemporaryDirectory() as tmp:
        trainer = None
        if args.only in ("both", "aevb"):
            trainer = Trainer(cfg, Path(tmp) / "aevb", dataset=data, progress=False)
            trainer.out.mkdir(parents=True, exist_ok=True)
        recipe = None
        if args.only in ("both", "recipe"):
            recipe = RecipeVAE()
            r_opt = torch.optim.Adam(recipe.parameters(), lr=1e-3)
            loader = torch.utils.data.DataLoader(BinarizedMNIST(data.train.x.view(-1, 784)), batch_size=128,
                                                 shuffle=True)
        t_aevb, t_recipe = [], []
        for epoch in range(args.epochs):
            if trainer is not None:
                cfg_one = trainer.config
                trainer.config = RunConfig(cfg_one.model, cfg_one.data,
                                           TrainConfig(**{**cfg_one.train.__dict__, "epochs": epoch + 1}))
                start = time.perf_counter()
                line = trainer.run()[-1]
                t_aevb.append(line["seconds"])
                print(f"epoch {epoch + 1} aevb   {line['seconds']:.2f} s (wall incl. validation+checkpoint "
                      f"{time.perf_counter() - start:.2f} s) train ELBO {line['train_elbo']:.2f}", flush=True)
            if recipe is not None:
                start = time.perf_counter()
                loss = recipe_epoch(recipe, r_opt, loader)
                t_recipe.append(time.perf_counter() - start)
                print(f"epoch {epoch + 1} recipe {t_recipe[-1]:.2f} s train ELBO {-loss:.2f}", flush=True)
        n = len(data.train)
        if trainer is not None:
            model = trainer.model.eval()
            res = {"seconds_per_epoch": summary(t_aevb), "samples_per_second": n / statistics.median(t_aevb),
                   "test_elbo": evaluate_elbo(model, test_x)["elbo"]}
            if args.k:
                start = time.perf_counter()
                ev = evaluate(model, test_x, k=args.k, batch_size=100, chunk=500)
                res.update(log_likelihood=ev["log_likelihood"], log_likelihood_stderr=ev["log_likelihood_stderr"],
                           k=args.k, eval_seconds=time.perf_counter() - start)
            result["aevb"] = res
        if recipe is not None:
            result["recipe"] = {"seconds_per_epoch": summary(t_recipe),
                                "samples_per_second": n / statistics.median(t_recipe),
                                "test_elbo": recipe_test_elbo(recipe, test_x.view(-1, 784))}
        if trainer is not None and recipe is not None:
            result["speedup_median"] = statistics.median(t_recipe) / statistics.median(t_aevb)
    result["peak_rss_mb"] = peak_rss_mb()
    report(result, args.json)


if __name__ == "__main__":
    main()
