"""``aevb edit``: steer an image's code toward a label and decode it (``aevb.steering``).

    aevb edit runs/mnist --image three.png --toward 8 --amount 1.0           # three-toward-8.png
    aevb edit runs/mnist --image three.png --toward 8 --away 3 --steps 6     # a strip from 0 to the amount
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import UserError
from .options import data_dir_option, device_option, int_list, resolved_device, split_option, trust_code_option

_labels = int_list("labels", "7 or 3,5", min_value=0)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--image", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The PNG/JPEG to edit (resized to the model's input).")
@click.option("--toward", required=True, callback=_labels, help="Label(s) to steer toward, e.g. 8 or 3,5.")
@click.option("--away", callback=_labels,
              help="Label(s) to steer away from (default: every image without a --toward label).")
@click.option("--amount", type=float, default=1.0, show_default=True,
              help="How far: 1 moves the code by the whole difference of the two mean codes; negative "
                   "steers the other way.")
@click.option("--steps", type=click.IntRange(min=1, max=32), default=1, show_default=True,
              help="1: the edited image alone; N > 1: a strip of the input and the codes at N amounts "
                   "from 0 (the reconstruction) to --amount.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG path (default: IMAGE's folder, NAME-toward-LABEL.png).")
@click.option("--invert", is_flag=True, help="Invert the image first (dark strokes on light paper).")
@split_option
@click.option("--n", "n_codes", type=click.IntRange(min=2), default=10000, show_default=True,
              help="Labelled images of --split whose mean codes make the direction.")
@data_dir_option
@device_option
@trust_code_option
def edit(run_dir, image, toward, away, amount, steps, out, invert, split, n_codes, data_dir, device,
         trust_code) -> None:
    """Steer an image's code toward a label and decode it.

    IMAGE's code moves by --amount along the direction from one label's mean code to another's. The direction is the mean code of the --split images labelled --toward minus that of the
    images labelled --away (or of all the others); it is printed as JSON with the counts.
    """
    import torch

    from ..run import load
    from ..images import read_image, write_image
    from ..steering import SteeringError, label_direction, labelled_codes, steer

    run = load(run_dir, device=resolved_device(device), trust_code=trust_code)
    model = run.model.eval()
    x = read_image(image, tuple(run.config.model.input_shape)).unsqueeze(0)  # (1, C, H, W)
    if invert:
        x = 1 - x
    try:
        codes, labels = labelled_codes(model, run.dataset(data_dir).split(split), n=n_codes)
        direction = label_direction(codes, labels, toward, away)
    except SteeringError as e:
        raise UserError(str(e).replace("toward:", "--toward:").replace("away:", "--away:")) from None
    with torch.no_grad():
        z = model.embed(x.to(model.device))  # (1, Z)
        amounts = torch.linspace(0, amount, steps + 1)[1:] if steps == 1 else torch.linspace(0, amount, steps)
        images = model.decode(steer(z, direction, amounts.to(z).view(-1, 1))).mean.float().cpu()  # (S, C, H, W)
    if steps > 1:
        images = torch.cat([x.cpu(), images])
    name = "-".join(str(v) for v in toward)
    target = out or image.parent / f"{image.stem}-toward-{name}.png"
    summary = {k: v for k, v in direction.to_dict().items() if k != "direction"}
    click.echo(json.dumps({**summary, "amount": amount, "split": split}))
    click.echo(f"wrote {write_image(images if steps > 1 else images[0], target)}")
