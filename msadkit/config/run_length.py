"""Shortening or lengthening a run: one rule for ``msadkit train --iterations`` and the notebooks.

Setting ``solver.max_iter`` alone keeps every other count of iterations of the full schedule, so a
40-iteration run of a demo config (warm-up 50, KD ramp 50) would never leave its warm-up nor reach
full distillation weight. A run length given as ``iterations`` scales every count of iterations in
the config by ``iterations / solver.max_iter``, so the schedule keeps its shape:

* the schedule (:data:`SCHEDULE_KEYS`: warm-up, learning-rate steps) and every distillation term's
  iteration-valued option (:data:`TERM_ITERATION_OPTIONS`: the KD ramp) always;
* the periods (:data:`PERIOD_KEYS`: logging, checkpoints, validation, the parameter check) only
  where they fit the config's run but not the new one: a 40-iteration run keeps logging every 10
  iterations, but a validation every 50 becomes one every 7 instead of none at all.

Keys whose names read like counts of iterations but are not points of the schedule are listed in
:data:`NOT_SCALED`, with the reason; a test checks that every such name in the defaults and in the
registered terms' options is in one of these lists. SAD's alternation of labeled and pseudo-labeled
batches is every other batch, whatever the length: it has no count to scale.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from msadkit.config.sections import dotted_value
from msadkit.errors import ConfigError

__all__ = [
    "LENGTH_KEY",
    "SCHEDULE_KEYS",
    "PERIOD_KEYS",
    "TERM_ITERATION_OPTIONS",
    "NOT_SCALED",
    "ITERATION_NAME",
    "scaled_solver",
    "scaled_run_length",
    "override_strings",
    "run_length_overrides",
    "schedule_label",
]

LENGTH_KEY = "solver.max_iter"
# Points of the schedule: scaled with the run, rounded, never below 1 (steps) or 0 (warm-up).
SCHEDULE_KEYS = ("solver.steps", "solver.warmup_iters")
# Periods: scaled only where they fit the config's run and not the new one (0 stays off).
PERIOD_KEYS = (
    "trainer.log_period",
    "trainer.checkpoint_period",
    "trainer.eval_period",
    "trainer.divergence.param_check_period",
)
# Options of a distill.losses entry that count iterations (any term type): scaled like the warm-up.
TERM_ITERATION_OPTIONS = ("ramp_iters",)
# Names that look like counts of iterations but do not move with the run length, and why.
NOT_SCALED = {
    "trainer.divergence.reference_iters": "a sample size (the first losses whose median is the reference), "
    "not a point of the schedule",
}
# A key (or term option) whose name says it counts iterations.
ITERATION_NAME = re.compile(r"(^|_)(iters?|period|steps?)$")


def _check_iterations(iterations: Any, argument: str) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise ConfigError(f"{argument} must be a whole number of iterations, got {iterations!r}")
    if iterations < 1:
        raise ConfigError(f"{argument} must be >= 1, got {iterations}")
    return iterations


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
    iterations = _check_iterations(iterations, argument)
    scale = iterations / max(1, int(solver["max_iter"]))
    return {
        "max_iter": iterations,
        "steps": [max(1, round(step * scale)) for step in solver["steps"]],
        "warmup_iters": _scaled_count(solver["warmup_iters"], scale),
    }


def _scaled_count(value: int, scale: float) -> int:
    """A count of iterations where 0 means "none" (warm-up, ramp), scaled and rounded."""
    return max(0, round(int(value) * scale))


def _scaled_period(period: int, length: int, iterations: int) -> int:
    """A period that fits the config's run (``period <= length``) but not the new one is scaled
    like the schedule (at least 1, at most the new run); every other period is kept: 0 stays
    off, and a period past the config's own run keeps meaning "not during the run"."""
    if period <= 0 or period <= iterations or period > length:
        return period
    return min(iterations, max(1, round(period * iterations / length)))


def _scaled_losses(losses: list[Any], scale: float) -> list[Any]:
    """``distill.losses`` with every iteration-valued option scaled; an option an entry leaves at
    its term's default gets the scaled default written in (terms register their defaults in
    :data:`msadkit.config.sections.LIST_ITEM_OPTIONS` when the distillation package is imported)."""
    from msadkit.config.sections import LIST_ITEM_OPTIONS

    registered = LIST_ITEM_OPTIONS.get("distill.losses", {})
    scaled = []
    for entry in losses:
        if not isinstance(entry, dict):
            scaled.append(entry)
            continue
        entry = copy.deepcopy(entry)
        defaults = registered.get(str(entry.get("type")), {})
        for option in TERM_ITERATION_OPTIONS:
            value = entry.get(option, defaults.get(option))
            if isinstance(value, int) and not isinstance(value, bool):
                entry[option] = _scaled_count(value, scale)
        scaled.append(entry)
    return scaled


def scaled_run_length(config: Mapping[str, Any], iterations: int, *, argument: str = "iterations") -> dict[str, Any]:
    """Every count of iterations of ``config`` for a run of ``iterations``, as nested values.

    The solver as :func:`scaled_solver`; each period of :data:`PERIOD_KEYS` that fits the config's
    run but not the new one scaled the same way (at least 1, at most the new run); every option of
    :data:`TERM_ITERATION_OPTIONS` of each ``distill.losses`` entry scaled like the warm-up. For
    example the demo student (max_iter 300, warm-up 50, ramp 50, log every 10) at 40 iterations
    gets warm-up 7, ramp 7 and still logs every 10.

    Args:
        config: a resolved config (after the caller's other overrides).
        iterations: the new training length.
        argument: how the caller names ``iterations`` in an error (``--iterations``).

    Returns:
        ``{"solver": {...}, "trainer": {...}, "distill": {"losses": [...]}}``; ``trainer`` holds only
        the periods that change, ``distill`` is absent without distillation losses.

    Raises:
        ConfigError: ``iterations`` is not a positive integer.
    """
    iterations = _check_iterations(iterations, argument)
    length = max(1, int(dotted_value(config, LENGTH_KEY)))
    settings: dict[str, Any] = {"solver": scaled_solver(config["solver"], iterations, argument=argument)}
    periods: dict[str, Any] = {}
    for dotted in PERIOD_KEYS:
        period = int(dotted_value(config, dotted))
        new = _scaled_period(period, length, iterations)
        if new != period:
            node = periods
            parts = dotted.split(".")[1:]
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = new
    if periods:
        settings["trainer"] = periods
    losses = config.get("distill", {}).get("losses") or []
    if losses:
        settings["distill"] = {"losses": _scaled_losses(list(losses), iterations / length)}
    return settings


def override_strings(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Nested values as ``dotted.key=value`` overrides with YAML flow values (lists stay whole).

    ``{"distill": {"teacher": "runs/t", "losses": [{"type": "adl"}]}}`` gives
    ``["distill.teacher=runs/t", "distill.losses=[{type: adl}]"]``. An empty mapping is one value
    (``key={}``), and ``distill.losses`` is always one value, since the loader replaces that list whole.
    """
    import yaml

    texts = []
    for key, value in values.items():
        if isinstance(value, dict) and value and f"{prefix}{key}" != "distill.losses":
            texts += override_strings(value, f"{prefix}{key}.")
            continue
        inline = yaml.safe_dump(value, default_flow_style=True, width=2**31 - 1).strip()
        if inline.endswith("..."):  # yaml ends a bare scalar document with an explicit end marker
            inline = inline[: -len("...")].strip()
        texts.append(f"{prefix}{key}={inline}")
    return texts


def run_length_overrides(config: Mapping[str, Any], iterations: int, *, argument: str = "iterations") -> list[str]:
    """:func:`scaled_run_length` as ``key=value`` override strings (YAML flow values), to load the
    config again with: ``load_config(name, overrides + run_length_overrides(config, n))``."""
    return override_strings(scaled_run_length(config, iterations, argument=argument))


def schedule_label(label: str, max_iter: int) -> str:
    """The ``schedule`` of a run whose length differs from its config file's: ``demo`` becomes
    ``demo-30it`` (an empty label just ``30it``), so the AP table does not pass a shortened run off
    as the full schedule."""
    return f"{label}-{max_iter}it" if label else f"{max_iter}it"
