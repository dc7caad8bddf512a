"""Why figure 2's wake-sleep curves on Frey Face are flat: KL and active units along training.

Trains wake-sleep (and, for contrast, AEVB) on Frey Face with figure 2's settings and prints,
at log-spaced points, the bound on the 200 fixed train / test images, the test KL(q(z|x) || p(z))
and the active units (Var_x E_q[z] > 0.01). Variants undo one of figure 2's settings at a time:

    python benchmarks/wake_sleep_collapse.py --budget 300000 --nz 5 \
        --variants paper no-decay default-init aevb [--json out.json]

paper: figure 2 as run (Adagrad 0.02, weight decay 1/N, N(0, 0.01^2) weights);
no-decay: weight decay 0; default-init: PyTorch's default initialisation; aevb: the paper's
settings with the AEVB objective.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from functools import partial

import torch

from aevb.evaluate import evaluate_elbo, latent_statistics
from aevb.objectives import elbo
from aevb.reproduce import common
from aevb.wake_sleep import wake_sleep_step_loss

VARIANTS = ("paper", "no-decay", "default-init", "aevb")


def run(variant: str, budget: int, nz: int, points: int, data, seed: int = 0) -> list[dict]:
    x_train, x_eval_train, x_eval_test = data
    config = common.paper_model_config("frey_face", nz)
    if variant == "default-init":
        config = dataclasses.replace(config, init_std=None)
    model = common.build(config, seed)
    decay = 0.0 if variant == "no-decay" else 1.0 / len(x_train)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02, weight_decay=decay)
    loss = partial(elbo, samples=1, kl="analytic") if variant == "aevb" else wake_sleep_step_loss
    rows: list[dict] = []

    def record(step: int) -> None:
        train = evaluate_elbo(model, x_eval_train, seed=seed)
        test = evaluate_elbo(model, x_eval_test, seed=seed)
        stats = latent_statistics(model, x_eval_test)
        rows.append({"variant": variant, "nz": nz, "samples": step * 100, "train_bound": round(train["elbo"], 1),
                     "test_bound": round(test["elbo"], 1), "test_kl": round(test["kl"], 3),
                     "active_units": stats["active_units"]})
        print(json.dumps(rows[-1]), flush=True)

    common.train_loop(model, x_train, loss, opt, budget // 100, 100, common.eval_schedule(budget, 100, points),
                      record, seed=seed)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=300_000)
    ap.add_argument("--nz", type=int, default=5)
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = common.load_paper_data("frey_face")
    data = (ds.train.x, common.eval_subset(ds.train.x, 200, 0), common.eval_subset(ds.test.x, 200, 0))
    rows = [r for v in args.variants for r in run(v, args.budget, args.nz, args.points, data)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
