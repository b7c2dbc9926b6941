"""Stopping a run that diverges, before it saves and evaluates garbage as if it were a model.

Gradient clipping hides divergence from the non-finite-loss check: with a learning rate far too
high the loss climbs to 1e7 and the weights to 1e17 while every number stays finite. Two checks
after each optimiser step catch it (``trainer.divergence`` in the config):

- the loss against its own early value: the median of the first ``reference_iters`` finite total
  losses (a running median while they come in) is the reference, and a total loss above
  ``factor`` times it is divergence (a relative test: loss scales differ between detectors,
  datasets and distillation terms);
- the parameters: any non-finite value, or one larger in magnitude than ``max_abs_param``.

The run then stops with :class:`TrainingDiverged` naming the iteration and the loss terms. The
check runs before the iteration's checkpoint is written, so the checkpoints on disk are the last
healthy ones, and ``model_final.pth`` is never written.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

import lightning as L
import torch
from torch import Tensor

from msadkit.errors import ConfigError, MsadkitError

__all__ = ["TrainingDiverged", "DivergenceMonitor", "largest_parameter", "TrainingHealth", "health_callbacks"]


class TrainingDiverged(MsadkitError):
    """The training loss exploded or the parameters became non-finite or huge."""


def _format_losses(losses: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.4g}" for name, value in losses.items())


class DivergenceMonitor:
    """The divergence rules on plain numbers, one call per iteration.

    Args:
        reference_iters: finite iterations whose median total loss is the reference (>= 1).
        factor: a total loss above ``factor * reference`` is divergence (> 1).
        max_abs_param: parameters larger in magnitude are divergence (> 0).
    """

    def __init__(self, *, reference_iters: int, factor: float, max_abs_param: float) -> None:
        if reference_iters < 1 or not factor > 1 or not max_abs_param > 0:
            raise ConfigError(
                "trainer.divergence needs reference_iters >= 1, factor > 1 and max_abs_param > 0, got "
                f"{reference_iters}, {factor} and {max_abs_param}"
            )
        self.reference_iters = int(reference_iters)
        self.factor = float(factor)
        self.max_abs_param = float(max_abs_param)
        self.early_losses: list[float] = []

    @property
    def reference(self) -> float | None:
        """Median of the early total losses known so far (at most ``reference_iters``), or None."""
        return statistics.median(self.early_losses) if self.early_losses else None

    def problem(self, losses: dict[str, float], largest_param: float) -> str | None:
        """What is wrong at this iteration, or None; records the early losses.

        Args:
            losses: this iteration's loss terms (their sum is the total loss).
            largest_param: the largest absolute parameter value after the step (``nan`` if any is).
        """
        total = sum(losses.values())
        if not math.isfinite(largest_param):
            return "non-finite parameters"
        if largest_param > self.max_abs_param:
            return (
                f"a parameter of magnitude {largest_param:.3g} (trainer.divergence.max_abs_param="
                f"{self.max_abs_param:.3g})"
            )
        if not math.isfinite(total):
            return "a non-finite loss"
        reference = self.reference
        if reference is not None and total > self.factor * reference:
            return (
                f"loss {total:.4g} is over {self.factor:g} x the median {reference:.4g} of the first "
                f"{len(self.early_losses)} iterations (trainer.divergence.factor)"
            )
        # A running median while the first iterations come in: a loss that explodes within them
        # is caught too, and does not raise the reference.
        if len(self.early_losses) < self.reference_iters:
            self.early_losses.append(total)
        return None


@torch.no_grad()
def largest_parameter(parameters: Iterable[Tensor]) -> float:
    """The largest absolute value over ``parameters`` (``nan`` when any value is nan)."""
    tensors = [p.detach() for p in parameters if p.numel() > 0]
    if not tensors:
        return 0.0
    # Fused on CUDA; on the CPU about 3 ms for the 1.7 M parameters of the width-0.25 demo model
    # (torch._foreach_norm(..., inf) takes about 20 ms there).
    maxima = torch._foreach_max(torch._foreach_abs(tensors))
    return float(torch.stack([m.float().to(maxima[0].device) for m in maxima]).max())


class TrainingHealth(L.Callback):
    """Raises :class:`TrainingDiverged` after an optimiser step that leaves the run diverged.

    Every process decides alike (any process's divergence stops all of them), so DDP does not
    hang on a process that stopped alone. The early losses are kept in the checkpoint, so a
    resumed run compares against the same reference.

    The loss is checked after every step; the parameters (a pass over all of them, a few
    milliseconds on the CPU) every ``param_check_period`` steps and at every step that writes a
    checkpoint or ends the run, so no checkpoint and no ``model_final.pth`` holds weights that
    failed the check.

    Args:
        divergence: the ``trainer.divergence`` section (``enabled``, ``reference_iters``,
            ``factor``, ``max_abs_param``, ``param_check_period``).
        checkpoint_period: ``trainer.checkpoint_period``.
        max_iter: ``solver.max_iter``.
    """

    def __init__(self, divergence: dict[str, Any], *, checkpoint_period: int, max_iter: int) -> None:
        self.monitor = DivergenceMonitor(
            reference_iters=divergence["reference_iters"],
            factor=divergence["factor"],
            max_abs_param=divergence["max_abs_param"],
        )
        if divergence["param_check_period"] < 1:
            raise ConfigError(
                f"trainer.divergence.param_check_period must be >= 1, got {divergence['param_check_period']}"
            )
        self.periods = (int(divergence["param_check_period"]), max(1, int(checkpoint_period)))
        self.max_iter = int(max_iter)

    def _checks_parameters(self, step: int) -> bool:
        return step >= self.max_iter or any(step % period == 0 for period in self.periods)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        losses = {name: float(value) for name, value in getattr(pl_module, "last_losses", {}).items()}
        largest = 0.0
        if self._checks_parameters(trainer.global_step):
            largest = largest_parameter(p for p in pl_module.parameters() if p.requires_grad)
        problem = self.monitor.problem(losses, largest)
        if trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            # global_step already counts this iteration's step, as the iter_<step>.ckpt names do.
            raise TrainingDiverged(
                f"training diverged at iteration {trainer.global_step}: {problem or 'on another process'} "
                f"(losses: {_format_losses(losses)}); the checkpoints written before are kept and no "
                "model_final.pth is written; lower solver.base_lr or solver.clip_grad_norm"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"early_losses": list(self.monitor.early_losses)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.monitor.early_losses = [float(v) for v in state_dict.get("early_losses", [])]


def health_callbacks(config: dict[str, Any]) -> list[TrainingHealth]:
    """``[TrainingHealth]`` for a run's config, or ``[]`` when ``trainer.divergence.enabled`` is false.

    Raises:
        ConfigError: a ``trainer.divergence`` value out of range (before anything is written).
    """
    trainer = config["trainer"]
    if not trainer["divergence"]["enabled"]:
        return []
    return [
        TrainingHealth(
            trainer["divergence"], checkpoint_period=trainer["checkpoint_period"], max_iter=config["solver"]["max_iter"]
        )
    ]
