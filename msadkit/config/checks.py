"""Checks of a resolved config's counts and schedule, made before anything is written.

Types are checked key by key while the config is merged (:mod:`msadkit.config.loader`); what a
type cannot say is checked here: a count of iterations, images or processes is at least 1 (or 0
where 0 means "off"), and the learning-rate steps increase and fall inside the run. Each problem is
one line naming the key, so ``solver.max_iter=0`` no longer trains nothing and writes a model with
AP 0, and ``solver.batch_size=0`` no longer ends in a traceback from inside the data loader.
"""

from __future__ import annotations

from typing import Any

from msadkit.config.sections import dotted_value
from msadkit.errors import ConfigError

__all__ = ["POSITIVE_COUNTS", "NON_NEGATIVE_COUNTS", "check_counts"]

# Dotted keys whose value is a count that must be >= 1.
POSITIVE_COUNTS = (
    "solver.max_iter",
    "solver.batch_size",
    "trainer.checkpoint_period",
    "trainer.log_period",
    "trainer.eval_batch_size",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.keep_checkpoints",
    "model.num_classes",
    "data.size_divisibility",
    "data.test_short_side",
    "data.train_max_size",
    "data.test_max_size",
    "data.synthetic.num_train",
    "data.synthetic.num_val",
    "data.synthetic.image_size",
)
# Dotted keys whose value is a count where 0 means "none" or "off".
NON_NEGATIVE_COUNTS = (
    "solver.warmup_iters",
    "trainer.eval_period",
    "data.num_workers",
    "data.synthetic.num_unlabeled",
    "model.fcos.num_convs",
    "model.retinanet.num_convs",
    "model.backbone.freeze_at",
)


def check_counts(config: dict[str, Any], source: str = "the config") -> None:
    """Raise :class:`ConfigError` (one line naming the key) for an impossible count or schedule.

    Args:
        config: a resolved config.
        source: where it came from, for the message (a file name, "the overrides").
    """
    for dotted, lowest in [(key, 1) for key in POSITIVE_COUNTS] + [(key, 0) for key in NON_NEGATIVE_COUNTS]:
        value = dotted_value(config, dotted)
        if isinstance(value, int) and not isinstance(value, bool) and value < lowest:
            meaning = "" if lowest else " (0 turns it off)"
            raise ConfigError(f"{dotted} must be >= {lowest}{meaning}, got {value} in {source}")
    sides = dotted_value(config, "data.train_short_sides")
    if isinstance(sides, list) and (not sides or any(side < 1 for side in sides)):
        raise ConfigError(f"data.train_short_sides must be a non-empty list of sizes >= 1, got {sides} in {source}")
    # Steps past solver.max_iter stay allowed: they are how a run says "no decay before the end"
    # (a config's max_iter shortened by an override keeps its file's steps).
    steps = dotted_value(config, "solver.steps")
    if not isinstance(steps, list):
        return
    if any(step < 1 for step in steps) or any(b < a for a, b in zip(steps, steps[1:])):
        raise ConfigError(f"solver.steps must be iterations >= 1 in increasing order, got {steps} in {source}")
