"""Learning-rate schedule by iteration: linear warmup, then multi-step decay."""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

__all__ = ["warmup_multistep_factor"]


def warmup_multistep_factor(
    iteration: int,
    *,
    steps: Sequence[int],
    gamma: float = 0.1,
    warmup_iters: int = 500,
    warmup_factor: float = 0.001,
) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based).

    During warmup the factor grows linearly from ``warmup_factor`` at iteration 0 to 1 at
    ``warmup_iters``; it is then multiplied by ``gamma`` at each milestone in ``steps`` that has been
    reached (detectron2's WarmupMultiStepLR).
    """
    decay = gamma ** bisect_right(sorted(steps), iteration)
    if iteration >= warmup_iters or warmup_iters == 0:
        return decay
    alpha = iteration / warmup_iters
    return decay * (warmup_factor * (1 - alpha) + alpha)
