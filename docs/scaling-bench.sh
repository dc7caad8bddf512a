set -e
export AEVB_DATA_DIR="${AEVB_DATA_DIR:-../shared/data}"
A="--dataset mnist --binarize dynamic --hidden 400 --latent-dim 20 --epochs 3 --valid-size 0 --no-progress --no-figures"
for B in 128 512; do
  aevb train $A --batch-size $B --out runs/scaling/p1-b$B > /dev/null 2>&1
  aevb train $A --batch-size $B --nproc 2 --out runs/scaling/p2-b$B > /dev/null 2>&1
done
python - <<'PY'
import json
for b in (128, 512):
    for p in (1, 2):
        m=[json.loads(l) for l in open(f"runs/scaling/p{p}-b{b}/metrics.jsonl")]
        s=sorted(x["seconds"] for x in m)
        print(f"batch {b} nproc {p}: s/epoch median {s[1]:.2f} min {s[0]:.2f} max {s[2]:.2f}; test ELBO after 3 epochs {m[-1]['test_elbo']:.2f}")
PY
