"""FitNet feature mimicking on the FPN levels (Romero et al., "FitNets: Hints for Thin Deep Nets",
ICLR 2015), as the detection papers use it (docs/methods.md, "FitNet").

Each student level goes through a trained 1x1 adapter (the FitNets "regressor") to the teacher's
width and is pulled toward the teacher's map of the same level with a squared error:

    L = loss_weight * sum_l mean_{N,C,H,W} (A_l(S_l) - T_l)^2

The mean and ``loss_weight = 2.0`` are those of the FPN mimic in HikariTJU/LD (4287990,
``mmdet/models/losses/kd_loss.py`` ``IMLoss``: ``F.mse_loss`` with mean reduction;
``configs/im/im_r101_r50_coco_1x.py``: ``loss_im=dict(type='IMLoss', loss_weight=2.0)``, summed over
the levels by the head). ``adapt_equal_widths: false`` drops the adapters when both FPNs have the
same width, as LD's mimic does.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from msadkit.distill.adapters import adapters_if_widths_differ, make_feature_adapters
from msadkit.distill.distiller import DistillationLoss, LossDict, Targets
from msadkit.distill.feature_pairs import (
    as_loss_dtype,
    check_level_counts,
    sum_over_adapted_pairs,
)
from msadkit.distill.layout import fpn_widths
from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs

__all__ = ["fitnet_loss", "FitNetTerm", "build_fitnet_term", "OPTIONS"]

# Options of a ``type: fitnet`` entry and their defaults (LD's FPN mimic, see the module docstring).
OPTIONS: dict[str, Any] = {"loss_weight": 2.0, "adapt_equal_widths": True}


def fitnet_loss(
    student_maps: Sequence[Tensor],
    teacher_maps: Sequence[Tensor],
    *,
    adapters: Sequence[nn.Module] | None = None,
    loss_weight: float = 2.0,
    term: str = "fitnet",
) -> Tensor:
    """``loss_weight * sum_l mean((A_l(S_l) - T_l)^2)`` over the paired levels.

    Args:
        student_maps: ``L`` student maps ``(N, Cs, Hi, Wi)``.
        teacher_maps: ``L`` teacher maps ``(N, Ct, Hi, Wi)`` (detached here).
        adapters: at least ``L`` modules mapping ``Cs`` to ``Ct`` channels (the first ``L`` are
            used); None compares the student maps as they are.
        loss_weight: factor of the sum.
        term: the term's name, for messages.

    Returns:
        Scalar tensor, float32 for half inputs, else in the inputs' dtype.

    Raises:
        InputError: the maps cannot be paired (see :func:`paired_levels`).
    """
    def squared_error(level: int, student: Tensor, teacher: Tensor) -> Tensor:
        return (as_loss_dtype(student) - as_loss_dtype(teacher)).square().mean()

    return loss_weight * sum_over_adapted_pairs(student_maps, teacher_maps, adapters, squared_error, term=term)


class FitNetTerm(DistillationLoss):
    """FitNet: every student FPN level imitates the teacher's through a trained 1x1 adapter.

    Args:
        name: key of the loss in the loss dict.
        weight: factor the distiller applies.
        loss_weight: factor of the summed per-level mean squared errors.
        student_channels / teacher_channels: FPN widths.
        num_levels: number of distilled levels (adapters).
        adapt_equal_widths: build adapters also when both widths are equal (the FitNets regressor);
            False compares equal-width maps directly.
    """

    def __init__(
        self,
        *,
        name: str = "loss_fitnet",
        weight: float = 1.0,
        loss_weight: float = 2.0,
        student_channels: int,
        teacher_channels: int,
        num_levels: int = 5,
        adapt_equal_widths: bool = True,
    ) -> None:
        super().__init__(name=name, weight=weight)
        if loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {loss_weight}")
        self.loss_weight = float(loss_weight)
        self.adapters = (
            make_feature_adapters(student_channels, teacher_channels, num_levels=num_levels)
            if adapt_equal_widths
            else adapters_if_widths_differ(student_channels, teacher_channels, num_levels=num_levels)
        )

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
        """``{"": scalar}`` (the distiller applies ``weight``); ``student.levels`` and
        ``teacher.levels`` are ``L`` paired maps ``(N, C, Hi, Wi)``."""
        del targets, iteration
        loss = fitnet_loss(
            student.levels, teacher.levels, adapters=self.adapters, loss_weight=self.loss_weight, term=self.name
        )
        return {"": loss}

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, adapters={self.adapters is not None}, weight={self.weight}"


def build_fitnet_term(options: dict[str, Any], *, student: nn.Module, teacher: nn.Module) -> FitNetTerm:
    """``type: fitnet`` with options ``weight`` (1.0), ``name`` (loss_fitnet), ``loss_weight`` (2.0),
    ``adapt_equal_widths`` (true).

    Raises:
        ConfigError: an unknown option or value, a model without FPN levels, or level counts that differ.
    """
    values = resolve_options(options, OPTIONS, term="fitnet")
    if values["loss_weight"] < 0:
        raise ConfigError(f"distill.losses type 'fitnet': loss_weight must be >= 0, got {values['loss_weight']}")
    num_levels = check_level_counts(student, teacher, term="fitnet")
    return FitNetTerm(**values, **fpn_widths(student, teacher, term="fitnet"), num_levels=num_levels)
