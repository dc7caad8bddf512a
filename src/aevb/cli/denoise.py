"""``aevb denoise``: clean images with a model, or show how well it cleans corrupted test images.

    aevb train --dataset mnist --input-noise gaussian:0.5 --out runs/mnist-dvae    # a denoising VAE
    aevb denoise runs/mnist-dvae scan1.png scan2.png          # writes scan1-denoised.png, scan2-denoised.png
    aevb denoise runs/mnist-dvae --test 10 --out fig.png      # noisy / denoised / clean rows, PSNR beside each
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import UserError, labels_for
from .options import (data_dir_option, device_option, input_noise, resolved_device, seed_option, split_option,
                      trust_code_option)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="IMAGES: folder for NAME-denoised.png (default: beside each image). --test: the figure's "
                   "PNG path (default RUN_DIR/denoising.png).")
@click.option("--invert", is_flag=True, help="IMAGES: invert them first (dark strokes on light paper).")
@click.option("--label", type=click.IntRange(min=0), help="Conditional models: the class of the IMAGES.")
@click.option("--test", "n_test", type=click.IntRange(min=1, max=64),
              help="No IMAGES: corrupt the first N images of --split with --noise, denoise them and draw "
                   "noisy / denoised / clean rows with the PSNR of each (default 8).")
@click.option("--noise", callback=input_noise, metavar="SPEC",
              help="--test: the corruption, gaussian:SIGMA, mask:P or salt-pepper:P (default: the run's "
                   "own --input-noise).")
@split_option
@seed_option()
@data_dir_option
@device_option
@trust_code_option
def denoise(run_dir, images, out, invert, label, n_test, noise, split, seed, data_dir, device, trust_code) -> None:
    """Clean images with a model, or show it cleaning corrupted test images.

    Each of IMAGES becomes the decoded mean at its code; with no IMAGES, --test N images of
    --split are corrupted with --noise, cleaned and drawn with their PSNR. A model trained with --input-noise learned to undo that corruption; any other model
    denoises only as far as its reconstructions happen to. PSNR = 10 log10(1 / MSE) against
    the clean image, in dB (higher is better).
    """
    if images and (n_test is not None or noise is not None):
        raise UserError("--test and --noise are for the test-image figure; give them without IMAGES")
    from ..run import load

    run = load(run_dir, device=resolved_device(device), trust_code=trust_code)
    if images:
        _denoise_files(run, images, out, invert, label)
    else:
        _denoise_test(run, n_test or 8, noise, split, seed, out, data_dir)


def _denoise_files(run, images, out: Path | None, invert: bool, label: int | None) -> None:
    import torch

    from ..conditional import check_label, label_tensor
    from ..corruption import denoise
    from ..images import read_image, write_image

    shape = tuple(run.config.model.input_shape)
    label = check_label(label, run.config.model.num_classes, "--label", required=True)
    x = torch.stack([read_image(p, shape) for p in images])  # (N, C, H, W)
    if invert:
        x = 1 - x
    y = None if label is None else label_tensor(label, len(x), "cpu")
    cleaned = denoise(run.model, x, y=y)
    for path, image in zip(images, cleaned):
        target = (out or path.parent) / f"{path.stem}-denoised.png"
        click.echo(f"wrote {write_image(image, target)}")


def _denoise_test(run, n: int, noise: str | None, split: str, seed: int, out: Path | None, data_dir) -> None:
    import torch

    from ..corruption import corrupt, denoise, plot_denoising, psnr

    noise = noise or run.config.train.input_noise
    if noise is None:
        raise UserError(f"{run.dir} was trained without --input-noise: give the corruption to show, e.g. "
                        "--noise gaussian:0.5")
    part = run.dataset(data_dir).split(split)
    clean = part.x[:n].float().cpu()
    noisy = corrupt(clean, noise, torch.Generator().manual_seed(seed))
    y = labels_for(run, part.y, n, "cpu")
    cleaned = denoise(run.model, noisy, y=y)
    title = f"{run.dir.name}: {noise} on {len(clean)} {split} images of {run.config.data.dataset}"
    path = plot_denoising(noisy, cleaned, clean, out or run.dir / "denoising.png", title=title)
    scores = {"noise": noise, "images": len(clean), "psnr_noisy_db": _mean(psnr(noisy, clean)),
              "psnr_denoised_db": _mean(psnr(cleaned, clean))}
    click.echo(json.dumps(scores))
    click.echo(f"wrote {path}")


def _mean(values) -> float:
    return round(float(values.mean()), 3)
