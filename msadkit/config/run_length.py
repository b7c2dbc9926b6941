"""Shortening or lengthening a run: one rule for ``msadkit train --iterations`` and the notebooks.

Setting ``solver.max_iter`` alone keeps the warm-up and the decay steps of the full schedule, so a
10-iteration run of a demo config (warm-up 50) would never leave its warm-up. A run length given
as ``iterations`` scales the three together, so the learning-rate curve keeps its shape.
"""

from __future__ import annotations

from typing import Any, Mapping

from msadkit.errors import ConfigError

__all__ = ["scaled_solver", "schedule_label"]


def scaled_solver(solver: Mapping[str, Any], iterations: int, *, argument: str = "iterations") -> dict[str, Any]:
    """``solver.max_iter``, ``solver.steps`` and ``solver.warmup_iters`` for a run of ``iterations``.

    Every step and the warm-up are multiplied by ``iterations / solver["max_iter"]`` and rounded;
    a step never falls below 1 and the warm-up never below 0. For example max_iter 300, steps
    [240, 280], warm-up 50 at ``iterations=30`` gives max_iter 30, steps [24, 28], warm-up 5.

    Args:
        solver: the config's ``solver`` section (after any overrides).
        iterations: the new training length.
        argument: how the caller names ``iterations`` in an error (``--iterations``).

    Raises:
        ConfigError: ``iterations`` is not a positive integer.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise ConfigError(f"{argument} must be a whole number of iterations, got {iterations!r}")
    if iterations < 1:
        raise ConfigError(f"{argument} must be >= 1, got {iterations}")
    scale = iterations / max(1, int(solver["max_iter"]))
    return {
        "max_iter": iterations,
        "steps": [max(1, round(step * scale)) for step in solver["steps"]],
        "warmup_iters": max(0, round(solver["warmup_iters"] * scale)),
    }


def schedule_label(label: str, max_iter: int) -> str:
    """The ``schedule`` of a run whose length differs from its config file's: ``demo`` becomes
    ``demo-30it`` (an empty label just ``30it``), so the AP table does not pass a shortened run off
    as the full schedule."""
    return f"{label}-{max_iter}it" if label else f"{max_iter}it"
