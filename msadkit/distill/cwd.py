"""Channel-wise distillation, CWD (Shu et al., "Channel-wise Knowledge Distillation for Dense
Prediction", ICCV 2021), on the FPN maps or on the classification logits (docs/methods.md, "CWD").

Each channel of a map becomes a distribution over its ``H*W`` positions by a softmax at
temperature ``tau``; the student's distribution of channel ``c`` imitates the teacher's:

    L_map = tau^2 / (N*C) * sum_{n,c} sum_i p^T_{n,c,i} * (log p^T_{n,c,i} - log p^S_{n,c,i}),
    p_{n,c,.} = softmax(y_{n,c,.} / tau),          L = loss_weight * sum_l L_map(l)

as mmrazor's ``ChannelWiseDivergence`` (main 90c7af1, ``mmrazor/models/losses/cwd.py``). The
defaults ``tau = 1`` and ``loss_weight = 10`` per FPN level are those of
``configs/distill/mmdet/cwd/cwd_fpn_frcnn_r101_frcnn_r50_1x_coco.py`` (inherited by the RetinaNet
config). ``maps: logits`` distils the heads' classification maps instead (one channel per anchor and
class); mmrazor 0.x used ``tau = 1, loss_weight = 5`` there (``cwd_cls_head_gfl...py`` at 2dad240).
A student whose FPN is narrower than the teacher's goes through a 1x1 adapter per level, as the
paper aligns channel counts.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from msadkit.distill.adapters import adapters_if_widths_differ
from msadkit.distill.distiller import DistillationLoss, LossDict, Targets
from msadkit.distill.feature_pairs import (
    as_loss_dtype,
    check_level_counts,
    sum_over_adapted_pairs,
)
from msadkit.distill.layout import dense_detector_of, fpn_widths
from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs

__all__ = ["channel_wise_divergence", "cwd_loss", "ChannelWiseTerm", "build_cwd_term", "OPTIONS", "TARGETS"]

# What the term distils (option ``maps``): the FPN maps or the heads' classification logits. The
# option is not called ``on``: YAML 1.1 reads an ``on:`` key as the boolean true.
TARGETS = ("features", "logits")
# Options of a ``type: cwd`` entry and their defaults (mmrazor's FPN config, see the module docstring).
OPTIONS: dict[str, Any] = {"tau": 1.0, "loss_weight": 10.0, "maps": "features"}


def channel_wise_divergence(student: Tensor, teacher: Tensor, *, tau: float = 1.0) -> Tensor:
    """``tau^2 / (N*C) * sum_{n,c} KL(softmax(t_{n,c}/tau) || softmax(s_{n,c}/tau))`` over positions.

    Args:
        student: ``(N, C, H, W)`` map.
        teacher: ``(N, C, H, W)`` map of the same shape (detached here).
        tau: softmax temperature, > 0.

    Returns:
        Scalar tensor, float32 for half inputs, else in the inputs' dtype.
    """
    n, c, h, w = student.shape
    student_rows = as_loss_dtype(student).reshape(n * c, h * w) / tau
    teacher_rows = as_loss_dtype(teacher.detach()).reshape(n * c, h * w) / tau
    log_p_teacher = F.log_softmax(teacher_rows, dim=1)
    log_p_student = F.log_softmax(student_rows, dim=1)
    # p log p from log-probabilities: no 0 * log 0 when a teacher probability underflows.
    divergence = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum()
    return divergence * (tau * tau) / (n * c)


def cwd_loss(
    student_maps: Sequence[Tensor],
    teacher_maps: Sequence[Tensor],
    *,
    tau: float = 1.0,
    loss_weight: float = 10.0,
    adapters: Sequence[nn.Module] | None = None,
    term: str = "cwd",
    what: str = "feature",
) -> Tensor:
    """``loss_weight * sum_l channel_wise_divergence(A_l(S_l), T_l)`` over the paired maps.

    Args:
        student_maps: ``L`` maps ``(N, Cs, Hi, Wi)``.
        teacher_maps: ``L`` maps ``(N, Ct, Hi, Wi)``.
        tau: temperature.
        loss_weight: factor of the sum over levels.
        adapters: at least ``L`` modules mapping ``Cs`` to ``Ct`` channels, or None.
        term / what: for messages.

    Raises:
        InputError: the maps cannot be paired or differ in channels.
    """
    def divergence(level: int, student: Tensor, teacher: Tensor) -> Tensor:
        return channel_wise_divergence(student, teacher, tau=tau)

    return loss_weight * sum_over_adapted_pairs(student_maps, teacher_maps, adapters, divergence, term=term, what=what)


class ChannelWiseTerm(DistillationLoss):
    """CWD between paired FPN maps (``maps="features"``) or classification logits (``maps="logits"``).

    Args:
        name: key of the loss in the loss dict.
        weight: factor the distiller applies.
        tau: softmax temperature.
        loss_weight: factor of the sum over levels.
        maps: ``"features"`` or ``"logits"``.
        student_channels / teacher_channels: FPN widths; adapters when they differ (features only).
        num_levels: number of levels (adapters).
    """

    def __init__(
        self,
        *,
        name: str = "loss_cwd",
        weight: float = 1.0,
        tau: float = 1.0,
        loss_weight: float = 10.0,
        maps: str = "features",
        student_channels: int,
        teacher_channels: int,
        num_levels: int = 5,
    ) -> None:
        super().__init__(name=name, weight=weight)
        if maps not in TARGETS:
            raise ValueError(f"maps must be one of {TARGETS}, got {maps!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if loss_weight < 0:
            raise ValueError(f"loss_weight must be >= 0, got {loss_weight}")
        self.tau = float(tau)
        self.loss_weight = float(loss_weight)
        self.maps = maps
        # The distiller runs the teacher's head only when a term asks for it.
        self.needs_teacher_predictions = maps == "logits"
        # Logits have one channel per anchor and class on both sides: nothing to adapt.
        self.adapters = (
            adapters_if_widths_differ(student_channels, teacher_channels, num_levels=num_levels)
            if maps == "features"
            else None
        )

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
        """``{"": scalar}`` (the distiller applies ``weight``).

        With ``maps="features"`` the maps are ``student.levels`` / ``teacher.levels``, ``L`` maps
        ``(N, C, Hi, Wi)``; with ``maps="logits"`` they are ``predictions["cls_logits"]``, ``L`` maps
        ``(N, A*K, Hi, Wi)``.
        """
        del targets, iteration
        if self.maps == "features":
            student_maps, teacher_maps = student.levels, teacher.levels
        else:
            if teacher.predictions is None:
                raise ConfigError(f"distillation term {self.name!r} (maps: logits) needs the teacher's predictions")
            student_maps, teacher_maps = student.predictions["cls_logits"], teacher.predictions["cls_logits"]
        loss = cwd_loss(
            student_maps,
            teacher_maps,
            tau=self.tau,
            loss_weight=self.loss_weight,
            adapters=self.adapters,
            term=self.name,
            what="feature" if self.maps == "features" else "logit",
        )
        return {"": loss}

    def extra_repr(self) -> str:
        return f"maps={self.maps!r}, tau={self.tau}, loss_weight={self.loss_weight}, weight={self.weight}"


def build_cwd_term(options: dict[str, Any], *, student: nn.Module, teacher: nn.Module) -> ChannelWiseTerm:
    """``type: cwd`` with options ``weight`` (1.0), ``name`` (loss_cwd), ``tau`` (1.0), ``loss_weight``
    (10.0), ``maps`` (features | logits).

    Raises:
        ConfigError: an unknown option or value, a model without FPN levels, level counts that
            differ, or (``maps: logits``) detectors with different numbers of classes.
    """
    values = resolve_options(options, OPTIONS, term="cwd")
    where = "distill.losses type 'cwd'"
    if values["maps"] not in TARGETS:
        raise ConfigError(f"{where}: maps must be one of {TARGETS}, got {values['maps']!r}")
    if not values["tau"] > 0:
        raise ConfigError(f"{where}: tau must be > 0, got {values['tau']}")
    if values["loss_weight"] < 0:
        raise ConfigError(f"{where}: loss_weight must be >= 0, got {values['loss_weight']}")
    num_levels = check_level_counts(student, teacher, term="cwd")
    if values["maps"] == "logits":
        # Channel c of both heads must mean the same class (and anchor) for the pairs to make sense.
        student_classes = getattr(student, "num_classes", None)
        teacher_classes = dense_detector_of(teacher, term="cwd").num_classes
        if student_classes != teacher_classes:
            raise ConfigError(
                f"{where}: maps: logits compares the heads' class channels one to one, but the student has "
                f"{student_classes} classes and the teacher {teacher_classes}"
            )
    return ChannelWiseTerm(**values, **fpn_widths(student, teacher, term="cwd"), num_levels=num_levels)
