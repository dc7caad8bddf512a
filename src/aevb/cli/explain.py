"""``aevb explain``: a worked forward pass through a tiny VAE, step by step.

    aevb explain --x '[0.5, 1.0, -0.5]' --json
"""

from __future__ import annotations

import json

import click

from .options import json_list


@click.command()
@click.option("--x", "x", callback=json_list, help="Input, e.g. '[0.5, 1.0, -0.5]'.")
@click.option("--W-e", "W_e", callback=json_list, help="Encoder weights (hidden x inputs).")
@click.option("--b-e", "b_e", callback=json_list)
@click.option("--W-mu", "W_mu", callback=json_list)
@click.option("--b-mu", "b_mu", callback=json_list)
@click.option("--W-lv", "W_lv", callback=json_list, help="Log-variance head weights.")
@click.option("--b-lv", "b_lv", callback=json_list)
@click.option("--eps", callback=json_list, help="The noise epsilon (default zeros).")
@click.option("--W-d", "W_d", callback=json_list, help="Linear decoder weights (inputs x latent).")
@click.option("--b-d", "b_d", callback=json_list)
@click.option("--x-recon", "x_recon", callback=json_list, help="Use this x' instead of decoding z.")
@click.option("--activation", type=click.Choice(["linear", "tanh", "relu"]), default="linear", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
def explain(as_json, activation, **values) -> None:
    """A worked forward pass through a tiny VAE (3 inputs, 2 latent dimensions), each step
    with its formula and value. The defaults reproduce the tutorials' worked example."""
    from ..explain import Example, explain as run_explain, format_steps

    ex = Example(activation=activation, **{k: v for k, v in values.items() if v is not None})
    steps = run_explain(ex)
    if as_json:
        click.echo(json.dumps({s["name"]: s["value"] for s in steps}))
    else:
        click.echo(format_steps(steps))
