"""Schedule points given as a share of a stage or as a number of steps."""

from __future__ import annotations


def stage_steps(value: float, total_steps: int) -> int:
    """A schedule point in steps: ``value`` below 1 is a share of the stage's ``total_steps``, from 1 on a
    number of steps (``optim.warmup``, Semiformer's ``warmup_u``, SSMAE's gate). Shares keep their place when
    ``--budget`` or ``bench`` shortens a stage; step counts do not.

    Examples:
        >>> stage_steps(0.1, 2800), stage_steps(125, 500)
        (280, 125)
    """
    return round(value * total_steps) if value < 1 else int(value)
