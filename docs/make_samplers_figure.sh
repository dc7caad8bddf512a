#!/usr/bin/env bash
# Regenerate docs/figures/samplers_ae_mnist.png and docs/samplers-ae-mnist.json (docs/samplers.md): a plain AE
# with a 16-D code trained briefly on MNIST, its three fitted samplers, and its samples from N(0, I) beside
# theirs. A few minutes on 2 CPU cores.
#
#   AEVB_DATA_DIR=/path/to/shared/data docs/make_samplers_figure.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-runs/samplers}"
RUN="$RUNS/mnist-ae"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p docs/figures

if [ ! -f "$RUN/model.safetensors" ]; then
    python -m aevb train --dataset mnist --model ae --latent-dim 16 --hidden 400 --subset 10000 --epochs 8 \
        --binarize dynamic --seed 0 --no-progress --no-figures --out "$RUN"
fi
python -m aevb fit-prior "$RUN" --sampler gmm --components 10
python -m aevb fit-prior "$RUN" --sampler maf --epochs 30
python -m aevb fit-prior "$RUN" --sampler two-stage --epochs 30

python - "$RUN" <<'PY'
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import aevb
from aevb.images import tile
from aevb.samplers import encode_codes, load_fitted

run = aevb.load(sys.argv[1])
n = 36
panels = [("N(0, I): the AE has no prior", run.model.sample(n, generator=torch.Generator().manual_seed(0)))]
for name in ("gmm", "maf", "two-stage"):
    panels.append((f"{name} sampler", run.sample(n, sampler=name, seed=0)))
fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
for ax, (title, images) in zip(axes, panels):
    ax.imshow(tile(images, ncol=6).permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=10)
    ax.axis("off")
fig.suptitle("A plain autoencoder (16-D code, MNIST) decodes codes from each sampler", fontsize=11)
fig.tight_layout()
fig.savefig("docs/figures/samplers_ae_mnist.png", dpi=100)

# How well each density covers the codes of test images the samplers never saw: mean log p(code) in nats.
test = run.dataset().test
codes = encode_codes(run.model, test.x)
normal = torch.distributions.Normal(0.0, 1.0).log_prob(codes.double()).sum(1)
record = {"run": sys.argv[1], "test_codes": len(codes), "code_std_per_dim": codes.std(0).tolist(),
          "mean_test_code_log_density": {"N(0, I)": float(normal.mean())}}
for name in ("gmm", "maf"):
    record["mean_test_code_log_density"][name] = float(load_fitted(run, name).log_prob(codes).mean())
for name in ("gmm", "maf", "two-stage"):
    record[name] = json.loads((run.dir / f"sampler-{name}.json").read_text())["fit_stats"]
with open("docs/samplers-ae-mnist.json", "w") as f:
    json.dump(record, f, indent=2)
print(json.dumps(record["mean_test_code_log_density"], indent=2))
PY
