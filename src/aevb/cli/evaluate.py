"""``aevb evaluate``: a run's bounds and latent statistics on a split.

    aevb evaluate runs/digits --k 1000 --json
    aevb evaluate runs/mnist --k 0 --sample-quality     # + fd, precision, recall, density, coverage
    aevb evaluate runs/dsprites --k 0 --disentanglement      # the five disentanglement metrics
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import labels_for
from .options import data_dir_option, device_option, resolved_device, seed_option, split_option, trust_code_option


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--k", type=click.IntRange(min=0), default=5000, show_default=True,
              help="Importance samples per image of the log p(x) estimate (the k-sample IWAE bound of the "
                   "evaluation, not of training: that is train --iwae-k); 0 skips it.")
@split_option
@click.option("--n", "limit", type=click.IntRange(min=1),
              help="Evaluate only the first N images of the split (--sample-quality: and draw N samples).")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--chunk", type=click.IntRange(min=1), default=None,
              help="Cap on the samples decoded at once per image (memory is bounded without it: "
                   "chunks stay under 16 MiB).")
@seed_option()
@data_dir_option
@device_option
@trust_code_option
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Logistic-regression and k-NN accuracy of the codes (fitted on the train split's codes).")
@click.option("--sample-quality", is_flag=True,
              help="Also the Frechet distance, precision, recall, density and coverage of samples and of "
                   "reconstructions against the split's images (N of each, --n), in the features of a classifier "
                   "aevb trains on the data set (cached); not comparable with Inception-FID "
                   "(docs/sample-quality.md).")
@click.option("--sampler", metavar="NAME",
              help="With --sample-quality: draw the samples from this post-hoc sampler of the run (aevb fit-prior) "
                   "instead of the model's prior.")
@click.option("--disentanglement", is_flag=True,
              help="Also the beta-VAE and FactorVAE scores, MIG, SAP and DCI on the data set's ground-truth factors "
                   "(dsprites, or npy: with factors), with Locatello et al.'s sample sizes, and the figure "
                   "RUN_DIR/figures/factor_traversal.png (docs/disentanglement.md).")
@click.option("--disentanglement-size", "disentanglement_sizes", multiple=True, metavar="KEY=N",
              help="Change one sample size of the disentanglement metrics, e.g. dci_train=2000 (repeatable; keys in "
                   "docs/disentanglement.md).")
@click.option("--disentanglement-jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes that fit DCI's classifiers (one per factor) side by side; the scores do not change.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the one kept as evaluation.json).")
def evaluate(run_dir, k, split, limit, batch_size, chunk, seed, data_dir, device, probe, sample_quality, sampler,
             disentanglement, disentanglement_sizes, disentanglement_jobs, as_json, trust_code) -> None:
    """ELBO, k-sample importance-weighted log p(x) with its standard error, bits/dim, active units,
    KL per latent dimension and latent-probe accuracies (nats per example); --k 0 skips log p(x).
    The result, with k, the number of images, the seed and the binarization, is kept in
    RUN_DIR/evaluation.json (the latest evaluation; report.html shows it)."""
    from ..checkpoint import write_evaluation
    from ..run import load
    from ..evaluate import evaluate as run_eval
    from ..evaluate import evaluation_record

    if sampler is not None and not sample_quality:
        raise click.UsageError("--sampler chooses the samples of --sample-quality; add --sample-quality")
    device = resolved_device(device)
    sizes = _sizes(disentanglement_sizes)
    run = load(run_dir, device=device, trust_code=trust_code)
    ds = run.dataset(data_dir)
    if disentanglement and ds.factors is None:
        raise click.ClickException(f"data set {ds.name} has no ground-truth factors: --disentanglement needs one with "
                                   "factors (dsprites, dsprites_small, or npy: with a factors array)")
    part = ds.split(split)
    if limit:
        part = part[:limit]  # before .x: a packed split unpacks only these rows
    x, y = part.x, part.y
    conditional = run.config.model.conditional
    if conditional:
        labels_for(run, y, None, device)  # a clear error when the split has no labels
    probe_train = (ds.train.x.to(device), ds.train.y.to(device)) if probe and ds.train.y is not None else None
    res = run_eval(run.model, x.to(device), k=k, batch_size=batch_size, chunk=chunk, seed=seed,
                   progress=not as_json and sys.stderr.isatty(),
                   y=y.to(device) if ((probe or conditional) and y is not None) else None, probe_train=probe_train)
    if sample_quality:
        res.update(_sample_quality(run, split, limit, seed, sampler, data_dir))
    res = evaluation_record(res, split=split, seed=seed, binarize=run.config.data.binarize)
    if disentanglement:
        res.update(_disentanglement(run, ds, part, seed, sizes, disentanglement_jobs, data_dir, quiet=as_json))
    path = write_evaluation(run_dir, res)
    if as_json:
        click.echo(json.dumps(res))
        return
    estimate = f"log p(x) with k = {k} importance samples per image" if k else "no log p(x) (k = 0)"
    click.echo(f"{run.config.data.dataset} {split} split, {res['n']} images, {estimate}, seed {seed}:")
    if conditional:
        click.echo(f"  conditional model ({run.config.model.num_classes} classes): every value is given the true "
                   "label y (elbo and log_likelihood are of log p(x|y))")
    for key, value in res.items():
        if isinstance(value, float):
            click.echo(f"  {key:24s} {value:.4f}")
        elif key in ("active_units", "latent_dim"):
            click.echo(f"  {key:24s} {value}")
    if res.get("kl_per_dim"):
        click.echo(f"  {'kl_per_dim':24s} " + " ".join(f"{v:.3f}" for v in res["kl_per_dim"]))
    _echo_sample_quality(res)
    if disentanglement:
        shares = res["disentanglement"]["factor_of_dim"]
        click.echo(f"  {'factor_of_dim':24s} " + " ".join(f"z{d}:{s['factor']}({s['share']:.2f})"
                                                         for d, s in enumerate(shares)))
        click.echo(f"wrote {res['disentanglement']['figure']}")
    click.echo(f"wrote {path}")


def _sample_quality(run, split, limit, seed, sampler, data_dir) -> dict:
    """--sample-quality: the keys aevb.quality.run_sample_quality adds to the evaluation."""
    from ..quality import run_sample_quality

    return run_sample_quality(run, split, limit=limit, seed=seed, sampler=sampler, data_dir=data_dir,
                              log=lambda line: click.echo(f"aevb: {line}", err=True))


def _echo_sample_quality(res: dict) -> None:
    """The lines of --sample-quality beyond its numbers (which print with the other values)."""
    if "sample_quality_unavailable" in res:
        click.echo(f"  sample quality: {res['sample_quality_unavailable']}")
    protocol = res.get("sample_quality_protocol")
    if protocol:
        net = protocol["feature_net"]
        click.echo(f"  sample quality: {protocol['n_samples']} samples and {protocol['n_real']} real images, "
                   f"k = {protocol['k']}; features: {protocol['features']} (v{net['version']}, test accuracy "
                   f"{net['test_accuracy']:.4f}); not comparable with Inception-FID")


def _sizes(pairs: tuple[str, ...]) -> dict[str, int]:
    """--disentanglement-size KEY=N options as a dict, each key one of Locatello's sample sizes."""
    from ..disentanglement import LOCATELLO_SIZES

    sizes = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in LOCATELLO_SIZES or not value.isdigit() or int(value) < 2:
            raise click.BadParameter(f"{pair!r}: give KEY=N with N >= 2 and KEY one of {', '.join(LOCATELLO_SIZES)}",
                                     param_hint="--disentanglement-size")
        sizes[key] = int(value)
    return sizes


def _disentanglement(run, ds, part, seed: int, sizes: dict[str, int], jobs: int, data_dir, quiet: bool) -> dict:
    """The disentanglement scores of the run's model on the whole data set (``aevb.disentanglement``), and
    the factor traversal figure, drawn from the evaluated split's first image, kept in the run directory.
    A run trained on a --subset is scored on the whole data set all the same (the full factor grid)."""
    import tempfile
    from dataclasses import replace

    from ..checkpoint import write_figure
    from ..data import load_dataset
    from ..disentanglement import evaluate_disentanglement, factor_of_each_dim
    from ..viz import plot_factor_traversal

    say = None if quiet else (lambda what: click.echo(f"disentanglement: {what} ...", err=True))
    if run.config.data.subset is not None:
        cfg = run.config.data if data_dir is None else replace(run.config.data, data_dir=data_dir)
        ds = load_dataset(replace(cfg, subset=None))
    out = evaluate_disentanglement(run.model, ds, seed=seed, sizes=sizes, progress=say, n_jobs=jobs)
    details = out["disentanglement"]
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_factor_traversal(run.model, part[:1].x[0], Path(tmp) / "f.png", factor_of_each_dim(details))
        details["figure"] = str(write_figure(run.dir, FACTOR_TRAVERSAL, png.read_bytes()))
    return out


FACTOR_TRAVERSAL = "factor_traversal.png"
