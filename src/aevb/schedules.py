"""The KL weight of the loss as a function of the training step (pure functions).

- ``constant``:  beta at every step.
- ``linear``:    beta * min(1, step / warmup_steps): the KL is switched in gradually
                 (Bowman et al. 2016; Sonderby et al. 2016).
- ``cyclical``:  in each cycle of ``warmup_steps`` steps the weight rises linearly from 0
                 to beta over the first half, then stays at beta (Fu et al. 2019, R = 0.5).

``step`` counts optimizer steps from 0. The weight changes the loss only; the ELBO that
is logged and evaluated is always the true bound (weight 1).

``capacity`` is the capacity-annealed VAE's target KL C (Burgess et al. 2018), in nats.
"""

from __future__ import annotations


def kl_weight(step: int, beta: float = 1.0, schedule: str = "constant", warmup_steps: int = 0) -> float:
    if schedule == "constant" or warmup_steps <= 0:
        return beta
    if schedule == "linear":
        return beta * min(1.0, step / warmup_steps)
    if schedule == "cyclical":
        phase = (step % warmup_steps) / warmup_steps
        return beta * min(1.0, 2.0 * phase)
    raise ValueError(f"unknown KL schedule {schedule!r}")


def capacity(step, capacity_max: float, capacity_steps: int):
    """C = capacity_max * min(1, step / capacity_steps): 0 at step 0, capacity_max from step capacity_steps
    on. ``step`` an int, or a tensor (a compiled step), which gives a tensor."""
    fraction = step / capacity_steps
    if isinstance(fraction, float):
        return capacity_max * min(1.0, fraction)
    return capacity_max * fraction.clamp(max=1.0)
