"""MSAD feature distillation: the low-res student's FPN imitates the teacher's fused pyramid.

Student level ``P^S_l`` (low-res ``p2..p6``) is pulled toward the teacher's C-FF output
``F_{l+1}`` (``F3..F7``), which has the same shape. Only features are distilled; the teacher head
is not run during student training.

The loss keeps the original "temperature" form, ``alpha * T^2 * mean|s/T - t/T|``. For L1 the
temperature only rescales the loss: it equals ``alpha * T * mean|s - t|``, i.e.
``0.6 * mean|s - t|`` with the defaults ``alpha=0.2, T=3``. For MSE it cancels completely:
``alpha * mean((s - t)^2)``. Weight and loss type stay configurable rather than being folded into
a single constant.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from msadkit.distill.adapters import adapters_if_widths_differ
from msadkit.distill.distiller import DistillationLoss, LossDict, Targets
from msadkit.distill.layout import fpn_widths, levels_pair_up
from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs

__all__ = ["kd_ramp", "msad_feature_loss", "LOSS_TYPES", "MSADFeatureLoss", "build_msad_feature", "OPTIONS"]

LOSS_TYPES = ("l1", "mse")


def kd_ramp(iteration: int, ramp_iters: int = 500) -> float:
    """Linear warm-up factor of the distillation loss, ``min(1, iteration / ramp_iters)``.

    Pass the trainer's global step as ``iteration``. The global step is stored in checkpoints, so
    a resumed run continues the ramp where it stopped; the original code used a per-process
    forward counter that restarted at 0 on resume and switched the loss off again.

    Args:
        iteration: optimisation step, starting at 0.
        ramp_iters: steps until the factor reaches 1; 0 disables the ramp (always 1.0).

    Returns:
        A float in ``[0, 1]``.
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if ramp_iters < 0:
        raise ValueError(f"ramp_iters must be >= 0, got {ramp_iters}")
    if ramp_iters == 0:
        return 1.0
    return min(1.0, iteration / ramp_iters)


def msad_feature_loss(
    student_feats: Sequence[Tensor],
    teacher_feats: Sequence[Tensor],
    *,
    loss_type: str = "l1",
    alpha: float = 0.2,
    temperature: float = 3.0,
    ramp: float = 1.0,
    adapters: Sequence[nn.Module | None] | None = None,
) -> Tensor:
    """MSAD feature distillation loss summed over levels.

    ``ramp * sum_l alpha * T^2 * mean_{N,C,H,W} d(s_l / T, t_l / T)`` with ``d`` the absolute
    difference (``"l1"``) or the squared difference (``"mse"``). See the module docstring for the
    equivalent forms without ``T``.

    The teacher features are detached here, so no gradient reaches the teacher whatever its
    ``requires_grad`` flags are. The loss is computed in float32 even under autocast.

    Args:
        student_feats: student levels ``P2..P6`` (low-res), each ``(N, Cs, Hi, Wi)``.
        teacher_feats: teacher fused levels ``F3..F7``, each ``(N, Ct, Hi, Wi)``.
        loss_type: ``"l1"`` (the original code) or ``"mse"``.
        alpha: loss weight.
        temperature: divides both features; must be > 0.
        ramp: factor from :func:`kd_ramp`.
        adapters: optional per-level modules (1x1 convs, see
            :func:`~msadkit.distill.adapters.make_feature_adapters`) applied to the student features
            first, for students whose FPN width differs from the teacher's; a ``None`` entry leaves
            that level as it is.

    Returns:
        Scalar tensor.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(student_feats) != len(teacher_feats):
        raise ValueError(
            f"student_feats has {len(student_feats)} levels but teacher_feats has "
            f"{len(teacher_feats)}"
        )
    if len(student_feats) == 0:
        raise ValueError("student_feats and teacher_feats are empty; at least one level is needed")
    if adapters is not None and len(adapters) != len(student_feats):
        raise ValueError(
            f"adapters has {len(adapters)} entries but there are {len(student_feats)} levels"
        )

    scale = alpha * temperature * temperature
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for level, (student, teacher) in enumerate(zip(student_feats, teacher_feats)):
        adapter = adapters[level] if adapters is not None else None
        if adapter is not None:
            student = adapter(student)
        teacher = teacher.detach()
        _check_level(level, student, teacher, adapted=adapter is not None)
        diff = student.float() / temperature - teacher.float() / temperature
        per_level = diff.abs().mean() if loss_type == "l1" else diff.square().mean()
        total = total + scale * per_level
    return total * ramp


def _check_level(level: int, student: Tensor, teacher: Tensor, *, adapted: bool) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(
            f"level {level}: features must be (N, C, H, W), got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )
    if student.shape[1] != teacher.shape[1]:
        hint = (
            "the adapter's output channels do not match the teacher"
            if adapted
            else "pass adapters (1x1 convs, see make_feature_adapters) for a student of another width"
        )
        raise ValueError(
            f"level {level}: student has {student.shape[1]} channels but teacher has "
            f"{teacher.shape[1]} (student {tuple(student.shape)}, teacher {tuple(teacher.shape)}); "
            f"{hint}"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"level {level}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
            "differ in shape; the student's low-res P_l must match the teacher's fused F_(l+1)"
        )


# Options of a ``type: msad_feature`` entry and their defaults (the original code's values).
OPTIONS: dict[str, Any] = {"loss_type": "l1", "alpha": 0.2, "temperature": 3.0, "ramp_iters": 500}


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
        self.adapters = adapters_if_widths_differ(student_channels, teacher_channels, num_levels=num_levels)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
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


def build_msad_feature(
    options: dict[str, Any], *, student: nn.Module, teacher: nn.Module
) -> MSADFeatureLoss:
    """``type: msad_feature`` with options ``weight``, ``loss_type``, ``alpha``, ``temperature``, ``ramp_iters``.

    Raises:
        ConfigError: an unknown option or value, or a student whose levels cannot line up with the
            teacher's (an MSAD teacher needs a ``model.resolution: low`` student; a plain teacher a
            student at its own resolution and levels).
    """
    values = resolve_options(options, OPTIONS, term="msad_feature", name="loss_msad_feature")
    where = "distill.losses type msad_feature"
    if values["loss_type"] not in LOSS_TYPES:
        raise ConfigError(f"{where}: loss_type must be one of {LOSS_TYPES}, got {values['loss_type']!r}")
    if not isinstance(values["ramp_iters"], int) or values["ramp_iters"] < 0:
        raise ConfigError(f"{where}: ramp_iters must be an integer >= 0, got {values['ramp_iters']!r}")
    if not values["temperature"] > 0:
        raise ConfigError(f"{where}: temperature must be > 0, got {values['temperature']!r}")

    student_levels = tuple(student.in_features)
    teacher_low = getattr(teacher, "low_features", None)
    if teacher_low is not None:
        # An MSAD teacher: its fused F3..F7 have the sizes of the low-resolution p2..p6.
        if student.input_downsample != 2 or student_levels != tuple(teacher_low):
            raise ConfigError(
                f"{where}: an MSAD teacher's fused levels align with a "
                f"low-resolution student on {tuple(teacher_low)}; set model.resolution=low "
                f"(the student uses {student_levels} at input_downsample={student.input_downsample})"
            )
    elif not levels_pair_up(student, teacher):
        raise ConfigError(
            f"{where}: student and teacher levels do not line up (student "
            f"{student_levels} at input_downsample={student.input_downsample}, teacher "
            f"{tuple(teacher.in_features)} at input_downsample={teacher.input_downsample}); "
            "use the same model.resolution, or a low-resolution student of a high-resolution teacher "
            "with distill.cross_resolution=true"
        )
    return MSADFeatureLoss(**values, **fpn_widths(student, teacher, term="msad_feature"), num_levels=len(student_levels))
