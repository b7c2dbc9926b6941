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

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["kd_ramp", "msad_feature_loss", "make_feature_adapters", "LOSS_TYPES"]

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


def make_feature_adapters(
    student_channels: int, teacher_channels: int, *, num_levels: int = 5
) -> nn.ModuleList:
    """One 1x1 conv per level mapping the student FPN width to the teacher's.

    Only needed when the two widths differ. The adapters are trained with the student and are not
    part of the deployed student.

    Returns:
        ``nn.ModuleList`` of ``num_levels`` ``Conv2d(student_channels, teacher_channels, 1)``.
    """
    if student_channels < 1 or teacher_channels < 1:
        raise ValueError(
            f"channel counts must be >= 1, got student_channels={student_channels}, "
            f"teacher_channels={teacher_channels}"
        )
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    return nn.ModuleList(
        nn.Conv2d(student_channels, teacher_channels, kernel_size=1) for _ in range(num_levels)
    )


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
        adapters: optional per-level modules (1x1 convs, see :func:`make_feature_adapters`)
            applied to the student features first, for students whose FPN width differs from
            the teacher's; a ``None`` entry leaves that level as it is.

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
