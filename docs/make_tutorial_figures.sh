#!/usr/bin/env bash
# Regenerate every figure of docs/tutorial.md: a VAE and a plain AE with a 2-D latent on
# MNIST, then `aevb plot` for each picture. Takes a few minutes on 2 CPU cores.
#
#   AEVB_DATA_DIR=/path/to/shared/data docs/make_tutorial_figures.sh [RUNS_DIR]
#
# EPOCHS and SUBSET (training images) may be set in the environment; the committed
# figures used the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-runs/tutorial}"
FIG=docs/figures
EPOCHS="${EPOCHS:-20}"
SUBSET="${SUBSET:-20000}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$FIG"

common=(--dataset mnist --latent-dim 2 --hidden 400 --epochs "$EPOCHS" --subset "$SUBSET" --seed 0 --no-progress --no-figures)
for kind in vae ae; do
    if [ ! -f "$RUNS/$kind/model.safetensors" ]; then
        python -m aevb train "${common[@]}" --model "$kind" --out "$RUNS/$kind"
    fi
done

plot() {  # plot RUN KIND NAME [extra flags]
    local run=$1 kind=$2 name=$3
    shift 3
    python -m aevb plot "$RUNS/$run" --kind "$kind" --out "$RUNS/$run/plots" "$@"
    cp "$RUNS/$run/plots/$kind.png" "$FIG/$name.png"
}
plot vae manifold vae_manifold --n 15
plot vae scatter vae_scatter --n 3000
plot vae samples vae_samples --n 64
plot vae reconstructions vae_reconstructions --n 12
plot vae interpolate vae_interpolate --a 3 --b 2 --n 8
plot vae traverse vae_traverse --a 0 --n 9
plot vae curves vae_curves
plot ae scatter ae_scatter --n 3000
plot ae samples ae_samples --n 64
plot ae manifold ae_manifold --n 15
python -m aevb explain > "$FIG/explain.txt"
ls -l "$FIG"
