#!/usr/bin/env bash
# Posterior collapse made visible, and an IWAE-trained model against the VAE (same architecture).
# MNIST dynamically binarized, 784-400-50 relu, Adam 1e-3, batch 128, 10 epochs each;
# evaluated on the first 1000 test images with k = 5000.
# Per-dimension KL figure from the eval.json files: benchmarks/plot_kl_per_dim.py.
# Runs `python -m aevb` (the installed package, or PYTHONPATH=src); docs/results.md has the results.
#   AEVB_DATA_DIR=../shared/data bash benchmarks/objective_options.sh runs/options
set -euo pipefail
out=${1:-runs/options}
common="--dataset mnist --binarize dynamic --hidden 400 --latent-dim 50 --batch-size 128 --epochs 10 --valid-size 0 --no-progress --no-figures"
# 60000/128 = 468 steps an epoch; warm-up over the first 5 epochs
declare -A variants=(
  [vae]=""
  [free-bits]="--free-bits 0.25"
  [warmup]="--kl-schedule linear --warmup-steps 2340"
  [iwae-k5]="--objective iwae --iwae-k 5"
)
for name in vae free-bits warmup iwae-k5; do
  t0=$SECONDS
  [ -f "$out/$name/model.safetensors" ] || python -m aevb train $common ${variants[$name]} --out "$out/$name" > /dev/null
  python -m aevb evaluate "$out/$name" --k 5000 --n 1000 --no-probe --json > "$out/$name/eval.json"
  echo "$name: train + evaluate $((SECONDS - t0)) s wall" >&2
  python - "$name" "$out/$name/eval.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))
kl = sorted((v for k, v in r.items() if k.startswith("kl_dim_")), reverse=True)
print(f"{sys.argv[1]:10s} elbo {r['elbo']:.2f}  log p(x) {r['log_likelihood']:.2f} ± {r['log_likelihood_stderr']:.2f}  "
      f"KL {r['kl']:.2f}  active units {r['active_units']}/{r['latent_dim']}  "
      f"KL per dim (sorted) {' '.join(f'{v:.2f}' for v in kl[:12])} ... {kl[-1]:.3f}")
PY
done
