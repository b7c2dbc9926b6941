"""Learning-rate schedules by iteration: linear warm-up, then multi-step decay (detection) or a
cosine (backbone pretraining)."""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Sequence

__all__ = ["warmup_multistep_factor", "warmup_cosine_lr"]


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


def warmup_cosine_lr(iteration: int, *, base_lr: float, total_iters: int) -> float:
    """Learning rate at ``iteration`` (0-based) of a run of ``total_iters``: linear warm-up over the
    first 5 % (at least one iteration), from ``base_lr / warmup`` to ``base_lr``, then a half cosine
    down to 0 at the end (``msadkit pretrain``)."""
    warmup = max(1, total_iters // 20)
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, total_iters - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
