"""The sample-quality table of docs/results-samples.md (issue 17): every model of one budget, with its prior
and with each post-hoc sampler, scored by ``aevb evaluate --sample-quality`` (fd, precision, recall, density,
coverage, and the same for reconstructions), with the model's log p(x) and a grid of samples per row.

    AEVB_DATA_DIR=/path/to/data AEVB_FEATURES_DIR=... \
        python benchmarks/sample_quality.py --out runs/samples-numbers [--datasets mnist,fashion_mnist]

Resumable: a trained run (its last epoch in metrics.jsonl), a fitted sampler (sampler-NAME.json) and a scored
row (in OUT/results.json) are kept and skipped when the script is run again. ``results.json`` is rewritten
atomically after every row, so a killed run loses at most the row in progress.

The budget is one for all models: an MLP of one hidden layer of 400 units, z = 20, 10 epochs of Adam (lr 1e-3,
batch 100, seed 0) on the full training split, the data set's default binarization (dynamic for these grey
data sets under the Bernoulli decoder). Samplers are fitted on the posterior-mean codes of the training images:
a GMM of 10 components on the first 10,000, a MAF and a two-stage VAE with their defaults on all 50,000.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

TRAIN = ["--hidden", "400", "--latent-dim", "20", "--epochs", "10", "--seed", "0"]
MODELS = {  # name: (extra `aevb train` flags, has a prior; an AE's "prior" row decodes N(0, I) codes anyway)
    "vae": ([], True),
    "ae": (["--model", "ae"], False),
    "beta-vae": (["--beta", "4"], True),
    "vamp": (["--prior", "vamp", "--prior-components", "50"], True),
    # the hierarchy: two layers of 20 (top first) on the same 400-wide MLP cells; its code is both layers (40)
    "hvae": (["--model", "hvae", "--latent-layers", "2", "--latent-sizes", "20,20"], True),
}
# `aevb fit-prior` flags of each sampler: the GMM on the first 10,000 training codes; the MAF and the two-stage
# VAE, networks that overfit 10,000 codes (the MAF) or learn slowly (the two-stage VAE), on all 50,000, with
# their defaults (docs/samplers.md)
SAMPLERS = {"gmm": ["--components", "10", "--max-codes", "10000"], "maf": [], "two-stage": []}
N_QUALITY = 10000  # real images, samples and reconstructions of the metric
LOGP_K = 1000      # importance samples per image of log p(x)
LOGP_STRIDE = 10   # log p(x) on every 10th test image: 1,000 images spread over the unshuffled split


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def cli(*args: str, log) -> None:
    """``python -m aevb ARGS``, its output appended to ``log``; stops the script if it fails."""
    log.write(f"$ aevb {' '.join(args)}\n")
    log.flush()
    subprocess.run([sys.executable, "-m", "aevb", *args], check=True, stdout=log, stderr=subprocess.STDOUT)


def trained(run: Path) -> bool:
    """Whether ``run`` finished its 10 epochs (its last metrics line is epoch 10)."""
    metrics = run / "metrics.jsonl"
    if not (run / "model.safetensors").exists() or not metrics.exists():
        return False
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return any(line.get("epoch") == 10 for line in lines)


def write_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def log_p(run, x) -> dict:
    """log p(x) (k = LOGP_K, every LOGP_STRIDE-th test image) with its standard error, and the ELBO."""
    from aevb.evaluate import evaluate

    res = evaluate(run.model, x[::LOGP_STRIDE], k=LOGP_K, seed=0)
    keys = ("n", "k", "elbo", "reconstruction", "kl", "log_likelihood", "log_likelihood_stderr", "active_units")
    return {key: res.get(key) for key in keys}


def grid(run, sampler: str | None, path: Path) -> None:
    """64 samples (8 x 8) of ``run.sample(64, sampler=sampler, seed=0)`` as a PNG (a model without a prior and
    no sampler: decoded N(0, I) codes, ``model.sample``, as ``aevb sample`` draws them)."""
    import torch

    from aevb.images import tile, write_image

    if sampler is None and not run.model.capabilities.has_prior:
        images = run.model.sample(64, generator=torch.Generator().manual_seed(0))
    else:
        images = run.sample(64, sampler=sampler, seed=0)
    write_image(tile(images.clamp(0, 1), ncol=8), path)


def do_dataset(dataset: str, out: Path, results: dict, results_path: Path, log) -> None:
    import aevb
    from aevb.quality import run_sample_quality

    for model, (flags, has_prior) in MODELS.items():
        run_dir = out / dataset / model
        t0, c0 = time.time(), cpu_seconds()
        if not trained(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            cli("train", "--dataset", dataset, *TRAIN, *flags, "--no-progress", "--no-figures",
                 "--out", str(run_dir), log=log)
        train_time = {"train_wall_s": time.time() - t0, "train_cpu_s": cpu_seconds() - c0}
        fit_cpu = {}  # CPU seconds of each fit made by this invocation (a fit kept from an earlier one: absent)
        for name, options in SAMPLERS.items():
            if not (run_dir / f"sampler-{name}.json").exists():
                c1 = cpu_seconds()
                cli("fit-prior", str(run_dir), "--sampler", name, *options, "--seed", "0", log=log)
                fit_cpu[name] = cpu_seconds() - c1
        run = aevb.load(run_dir)
        # the model's log p(x), from a row kept from an earlier invocation if there is one (it is the same in all)
        logp = next((row["log_p"] for key, row in results.items() if key.startswith(f"{dataset}/{model}/")), None)
        for sampler in [None, *SAMPLERS]:
            key = f"{dataset}/{model}/{sampler or 'prior'}"
            if key in results:
                continue
            t0, c0 = time.time(), cpu_seconds()
            row = {"dataset": dataset, "model": model, "sampler": sampler or "prior", "run": str(run_dir),
                   "train_flags": TRAIN + flags}
            if sampler is None:
                row.update(train_time)
            if has_prior and logp is None:
                logp = log_p(run, run.dataset().test.x)
            row["log_p"] = logp
            row.update(run_sample_quality(run, limit=N_QUALITY, seed=0, sampler=sampler,
                                          log=lambda line: log.write(f"aevb: {line}\n")))
            png = out / "grids" / f"{dataset}-{model}-{sampler or 'prior'}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            grid(run, sampler, png)
            row["grid"] = str(png)
            row["sampler_fit"] = (None if sampler is None else
                                  json.loads((run_dir / f"sampler-{sampler}.json").read_text())["fit_stats"])
            if sampler in fit_cpu:
                row["sampler_fit_cpu_s"] = fit_cpu[sampler]
            row["score_wall_s"], row["score_cpu_s"] = time.time() - t0, cpu_seconds() - c0
            if results_path.exists():  # another process may have added rows
                results.update({k: v for k, v in json.loads(results_path.read_text()).items() if k not in results})
            results[key] = row
            write_atomic(results_path, results)
            log.write(f"done {key}: fd {row.get('fd')}\n")
            log.flush()


LABELS = {"vae": "VAE", "ae": "AE", "beta-vae": "beta-VAE (beta 4)", "vamp": "VampPrior (50 pseudo-inputs)",
          "hvae": "hierarchical VAE (2 layers of 20)"}
PRIOR_WORDS = {"vamp": "its VampPrior", "hvae": "its hierarchical prior"}  # a learned prior's row (others: N(0, I))


def table(results: dict) -> str:
    """The rows of ``results`` as a markdown table (the docs' columns)."""
    head = ("| model | samples from | fd | precision | recall | density | coverage | log p(x) ± se | recon. fd |\n"
            "|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    order = {name: i for i, name in enumerate([*MODELS, "prior", *SAMPLERS])}
    for row in sorted(results.values(), key=lambda r: (order[r["model"]], order[r["sampler"]])):
        lp = row.get("log_p")
        logp = f"{lp['log_likelihood']:.2f} ± {lp['log_likelihood_stderr']:.2f}" if lp else "(no density)"
        source = PRIOR_WORDS.get(row["model"], "its N(0, I) prior") if row["sampler"] == "prior" else row["sampler"]
        if row["sampler"] == "prior" and not MODELS[row["model"]][1]:
            source = "N(0, I), decoded (it has no prior)"
        rows.append(f"| {LABELS[row['model']]} | {source} | {row['fd']:.1f} | {row['precision']:.3f} | "
                    f"{row['recall']:.3f} | {row['density']:.3f} | {row['coverage']:.3f} | {logp} | "
                    f"{row['reconstruction_fd']:.1f} |")
    return "\n".join(rows)


def figure(results: dict, path: Path, ncol: int = 5) -> None:
    """The first ``ncol`` x ``ncol`` samples of every row's grid, one panel per row of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    order = {name: i for i, name in enumerate([*MODELS, "prior", *SAMPLERS])}
    rows = sorted(results.values(), key=lambda r: (order[r["model"]], order[r["sampler"]]))
    cols = 4
    fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols, figsize=(2.4 * cols, 2.6 * ((len(rows) + 3) // 4)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        img = Image.open(row["grid"]).convert("L")
        side = img.width // 8  # an 8 x 8 tile of 28-pixel images and 1-pixel gaps: keep the top-left ncol x ncol
        ax.imshow(img.crop((0, 0, side * ncol, side * ncol)), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{LABELS[row['model']].split(' (')[0]} + {row['sampler']}\nfd {row['fd']:.1f}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    Image.open(path).convert("L").save(path, optimize=True)  # grey: a third of the bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--datasets", default="mnist,fashion_mnist")
    p.add_argument("--report", type=Path, metavar="FIGURES_DIR",
                   help="Print the tables of the rows done so far and draw FIGURES_DIR/samples_quality_DATASET.png; "
                        "trains and scores nothing.")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets.split(","):
        if args.report:
            results = json.loads((args.out / f"results-{dataset}.json").read_text())
            print(f"{dataset}\n\n{table(results)}\n")
            figure(results, args.report / f"samples_quality_{dataset}.png")
            continue
        results_path = args.out / f"results-{dataset}.json"
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        with open(args.out / f"log-{dataset}.txt", "a") as log:
            do_dataset(dataset, args.out, results, results_path, log)


if __name__ == "__main__":
    main()
