"""MSAD feature distillation as a ``distill.losses`` term (``type: msad_feature``, docs/methods.md §1.6).

The student's FPN levels (``p2..p6`` of the low-resolution image) imitate the teacher's levels
(the fused ``F3..F7`` of an MSAD teacher) with :func:`msadkit.distill.msad.msad_feature_loss`,
ramped in over ``ramp_iters`` steps of the trainer's global step.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from msadkit.distill.msad import LOSS_TYPES, kd_ramp, make_feature_adapters, msad_feature_loss
from msadkit.errors import ConfigError
from msadkit.modeling.distillation.distiller import DistillationLoss
from msadkit.modeling.distillation.outputs import StudentOutputs, TeacherOutputs
from msadkit.modeling.distillation.terms.registry import register_term

__all__ = ["MSADFeatureLoss", "build_msad_feature", "OPTIONS"]

# Options of a ``type: msad_feature`` entry and their defaults (the original code's values).
OPTIONS: dict[str, Any] = {"weight": 1.0, "loss_type": "l1", "alpha": 0.2, "temperature": 3.0, "ramp_iters": 500}


class MSADFeatureLoss(DistillationLoss):
    """``kd_ramp(iteration) * sum_l alpha * T^2 * mean d(P^S_l / T, F_(l+1) / T)``.

    With the defaults (L1, ``alpha=0.2``, ``T=3``) this is ``0.6 * sum_l mean|P^S_l - F_(l+1)|``
    ramped linearly from 0 at iteration 0 to full strength at ``ramp_iters``.

    Args:
        weight: factor the distiller applies to the loss.
        loss_type: ``"l1"`` or ``"mse"``.
        alpha: loss scale.
        temperature: divides both features (for L1 it only rescales, see ``msad_feature_loss``).
        ramp_iters: steps of the linear warm-up; 0 disables it.
        student_channels / teacher_channels: FPN widths; 1x1 conv adapters (trained with the
            student, not deployed) map the student's to the teacher's when they differ.
        num_levels: number of distilled levels.
        name: key of the loss in the loss dict.
    """

    def __init__(
        self,
        *,
        weight: float = 1.0,
        loss_type: str = "l1",
        alpha: float = 0.2,
        temperature: float = 3.0,
        ramp_iters: int = 500,
        student_channels: int,
        teacher_channels: int,
        num_levels: int = 5,
        name: str = "loss_msad_feature",
    ) -> None:
        super().__init__(name=name, weight=weight)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if ramp_iters < 0:
            raise ValueError(f"ramp_iters must be >= 0, got {ramp_iters}")
        self.loss_type = loss_type
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.ramp_iters = int(ramp_iters)
        self.num_levels = int(num_levels)
        self.adapters: nn.ModuleList | None = None
        if student_channels != teacher_channels:
            self.adapters = make_feature_adapters(student_channels, teacher_channels, num_levels=num_levels)

    def forward(
        self,
        student: StudentOutputs,
        teacher: TeacherOutputs,
        targets: list[dict[str, Tensor]],
        iteration: int,
    ) -> dict[str, Tensor]:
        """``{"": scalar}``: the ramped feature loss (the distiller applies ``weight``).

        Args:
            student: its ``levels`` are ``L`` maps ``(N, Cs, Hi, Wi)``.
            teacher: its ``levels`` are ``L`` maps ``(N, Ct, Hi, Wi)`` of the same sizes.
            targets: unused.
            iteration: the trainer's global step.
        """
        del targets
        loss = msad_feature_loss(
            student.levels,
            teacher.levels,
            loss_type=self.loss_type,
            alpha=self.alpha,
            temperature=self.temperature,
            ramp=kd_ramp(iteration, self.ramp_iters),
            adapters=list(self.adapters) if self.adapters is not None else None,
        )
        return {"": loss}

    def extra_repr(self) -> str:
        return (
            f"loss_type={self.loss_type!r}, alpha={self.alpha}, temperature={self.temperature}, "
            f"ramp_iters={self.ramp_iters}, weight={self.weight}"
        )


def _fpn_channels(model: nn.Module, role: str) -> int:
    channels = getattr(getattr(model, "backbone", None), "out_channels", None)
    if not isinstance(channels, int):
        raise ConfigError(f"distill.losses type msad_feature: the {role} ({type(model).__name__}) has no FPN backbone")
    return channels


@register_term("msad_feature")
def build_msad_feature(
    options: dict[str, Any], *, student: nn.Module, teacher: nn.Module, config: dict[str, Any]
) -> MSADFeatureLoss:
    """``type: msad_feature`` with options ``weight``, ``loss_type``, ``alpha``, ``temperature``, ``ramp_iters``.

    Raises:
        ConfigError: an unknown option or value, or a student whose levels cannot line up with the
            teacher's (an MSAD teacher needs a ``model.resolution: low`` student; a plain teacher a
            student at its own resolution and levels).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"distill.losses type msad_feature: unknown options {unknown}; known: {sorted(OPTIONS)}")
    values = {**OPTIONS, **options}
    if values["loss_type"] not in LOSS_TYPES:
        raise ConfigError(
            f"distill.losses type msad_feature: loss_type must be one of {LOSS_TYPES}, got {values['loss_type']!r}"
        )
    if not isinstance(values["ramp_iters"], int) or values["ramp_iters"] < 0:
        raise ConfigError(
            f"distill.losses type msad_feature: ramp_iters must be an integer >= 0, got {values['ramp_iters']!r}"
        )
    if not values["temperature"] > 0:
        raise ConfigError(f"distill.losses type msad_feature: temperature must be > 0, got {values['temperature']!r}")

    student_levels = tuple(student.in_features)
    teacher_low = getattr(teacher, "low_features", None)
    if teacher_low is not None:
        # An MSAD teacher: its fused F3..F7 have the sizes of the low-resolution p2..p6.
        if student.input_downsample != 2 or student_levels != tuple(teacher_low):
            raise ConfigError(
                "distill.losses type msad_feature: an MSAD teacher's fused levels align with a "
                f"low-resolution student on {tuple(teacher_low)}; set model.resolution=low "
                f"(the student uses {student_levels} at input_downsample={student.input_downsample})"
            )
    elif (student.input_downsample, student_levels) != (teacher.input_downsample, tuple(teacher.in_features)):
        raise ConfigError(
            "distill.losses type msad_feature: student and teacher levels do not line up (student "
            f"{student_levels} at input_downsample={student.input_downsample}, teacher "
            f"{tuple(teacher.in_features)} at input_downsample={teacher.input_downsample}); "
            "use the same model.resolution"
        )
    return MSADFeatureLoss(
        weight=float(values["weight"]),
        loss_type=values["loss_type"],
        alpha=float(values["alpha"]),
        temperature=float(values["temperature"]),
        ramp_iters=values["ramp_iters"],
        student_channels=_fpn_channels(student, "student"),
        teacher_channels=_fpn_channels(teacher, "teacher"),
        num_levels=len(student_levels),
    )
