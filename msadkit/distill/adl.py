"""Adaptive distillation loss (ADL) of Tang et al., "Learning Efficient Detector with
Semi-supervised Adaptive Distillation" (arXiv 1901.00366), for sigmoid classifiers.

The loss follows the released implementation rather than the paper's equation: the adaptive weight
is built from ``CE(q, p) - beta * H(q)`` and multiplies an alpha-balanced cross-entropy; the sum is
divided by the sum of the teacher probabilities raised to ``power`` (docs/methods.md §2.2).

As a ``distill.losses`` term (``type: adl``, docs/methods.md §2.3) the student's classification
logits at every location/anchor of every level imitate the teacher's; box regression keeps learning
from the (pseudo-)ground truth alone. Locations the student's own assignment ignores (RetinaNet's
best IoU in ``[0.4, 0.5)``) are left out, which is why pseudo-labels matter on unlabeled images.
``reduction: batch`` (default) divides the batch's sum by the batch's sum of ``q^power``, as the
original code does on each GPU; ``reduction: image`` averages per-image losses.
``normalizer: valid`` (default) sums ``q^power`` over the rows the loss sums; ``normalizer: all``
sums it over every row, ignored anchors included, as the original ``PowSum`` op does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msadkit.distill.distiller import DistillationLoss, LossDict, Targets
from msadkit.distill.layout import check_same_layout, check_same_prediction_shape
from msadkit.distill.options import resolve_options
from msadkit.errors import ConfigError
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs

__all__ = [
    "adaptive_distillation_loss",
    "AdaptiveDistillationTerm",
    "REDUCTIONS",
    "NORMALIZERS",
    "build_adl_term",
    "OPTIONS",
]

# Rows whose teacher probabilities enter the normaliser: the valid rows the loss sums ("valid"),
# or all rows, ignored anchors included ("all", the original PowSum over every probability).
NORMALIZERS = ("valid", "all")


def _check_arguments(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    alpha: float,
    beta: float,
    gamma: float,
    valid: Tensor | None,
    power: float,
    normalizer: str = "valid",
) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "adaptive_distillation_loss: student_logits and teacher_logits must have the same shape, "
            f"got student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() != 2:
        raise ValueError(
            "adaptive_distillation_loss: logits must have shape (N, K) (anchors x classes), "
            f"got student_logits {tuple(student_logits.shape)}"
        )
    if not student_logits.is_floating_point() or not teacher_logits.is_floating_point():
        raise ValueError(
            "adaptive_distillation_loss: logits must be floating point, got student_logits "
            f"{student_logits.dtype} and teacher_logits {teacher_logits.dtype}"
        )
    if gamma < 0:
        raise ValueError(f"adaptive_distillation_loss: gamma must be >= 0, got gamma={gamma}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"adaptive_distillation_loss: alpha must lie in [0, 1], got alpha={alpha}")
    if beta > 1.0:
        # D = KL(q||p) + (1 - beta) * H(q) can turn negative for beta > 1, and the weight
        # (1 - exp(-D))^gamma then has no meaning.
        raise ValueError(f"adaptive_distillation_loss: beta must be <= 1, got beta={beta}")
    if power < 0:
        raise ValueError(f"adaptive_distillation_loss: power must be >= 0, got power={power}")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"adaptive_distillation_loss: normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    if valid is not None:
        if valid.dtype != torch.bool or valid.shape != student_logits.shape[:1]:
            raise ValueError(
                "adaptive_distillation_loss: valid must be a bool tensor of shape (N,) = "
                f"{tuple(student_logits.shape[:1])}, got {valid.dtype} of shape {tuple(valid.shape)}"
            )


def _adaptive_weight(divergence: Tensor, gamma: float) -> Tensor:
    """``(1 - exp(-D))^gamma`` with a finite gradient everywhere, including at ``D = 0``.

    ``-expm1(-D)`` keeps precision when ``D`` is tiny (``1 - exp(-1e-20)`` is 0 in fp32). For
    ``0 < gamma < 1`` the derivative of ``w^gamma`` is infinite at ``w = 0``; the double ``where``
    gives the zero sub-gradient there instead of NaN.
    """
    base = -torch.expm1(-divergence.clamp_min(0.0))
    if gamma == 0:
        return torch.ones_like(base)
    positive = base > 0
    safe_base = torch.where(positive, base, torch.ones_like(base))
    return torch.where(positive, safe_base.pow(gamma), torch.zeros_like(base))


def adaptive_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.0,
    gamma: float = 2.0,
    valid: Tensor | None = None,
    power: float = 1.8,
    normalizer: str = "valid",
) -> Tensor:
    """Adaptive distillation loss between sigmoid classification logits.

    With student probability ``p = sigmoid(student_logits)`` and teacher probability
    ``q = sigmoid(teacher_logits)``, per anchor and class::

        CE(q, p) = -[q log p + (1 - q) log(1 - p)]
        H(q)     = -[q log q + (1 - q) log(1 - q)]          (teacher entropy)
        D        = CE(q, p) - beta * H(q)                  (= KL(q||p) + (1 - beta) H(q))
        weight   = (1 - exp(-D))^gamma                     (not detached: gradient flows through it)
        loss     = -weight * [alpha q log p + (1 - alpha)(1 - q) log(1 - p)]

    The result is the sum over the valid rows and all classes divided by
    ``max(sum of q^power over the rows ``normalizer`` names and all classes, 1)``.

    ``beta`` follows the convention of the original code, where the adaptive weight is built from
    ``CE - beta * H``; the paper writes ``KL + beta_paper * H``, so ``beta_paper = 1 - beta``. The
    released configs use ``beta = 0`` (``beta_paper = 1``): the weight then contains the full
    teacher entropy. ``beta = 1`` makes ``D = KL(q||p)``.

    Log-probabilities are computed from the logits with ``logsigmoid`` and in fp32 (or fp64 for
    fp64 inputs) with autocast disabled, so saturated teacher logits (``q`` exactly 0 or 1) and
    bfloat16 autocast give a finite loss and gradient. The teacher is a fixed target: no gradient
    flows into ``teacher_logits``.

    Args:
        student_logits: ``(N, K)`` student classification logits, ``N`` anchors/locations.
        teacher_logits: ``(N, K)`` teacher classification logits (temperature 1).
        alpha: weight of the positive term ``q log p``; ``1 - alpha`` weighs the negative term.
        beta: entropy coefficient in the code convention (see above), at most 1.
        gamma: focusing exponent of the adaptive weight, ``>= 0``; 0 gives a weight of 1.
        valid: optional bool ``(N,)``; ``False`` rows (e.g. ignored anchors) are left out of the
            sum, and of the normaliser unless ``normalizer="all"``. ``None`` keeps every row.
        power: exponent of the teacher probabilities in the normaliser.
        normalizer: ``"valid"`` sums ``q^power`` over the valid rows only; ``"all"`` over every
            row, as the original op does (ignored anchors enlarge the normaliser there).

    Returns:
        Scalar loss tensor (fp32, or fp64 for fp64 inputs).

    Raises:
        ValueError: on mismatched or non-2-D shapes, a bad ``valid`` mask, ``gamma < 0``,
            ``alpha`` outside ``[0, 1]``, ``beta > 1``, ``power < 0`` or an unknown ``normalizer``.
    """
    _check_arguments(
        student_logits,
        teacher_logits,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        valid=valid,
        power=power,
        normalizer=normalizer,
    )
    compute_dtype = torch.promote_types(student_logits.dtype, torch.float32)
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        student = student_logits.to(compute_dtype)
        teacher = teacher_logits.detach().to(compute_dtype)
        all_rows_power = torch.sigmoid(teacher).pow(power).sum() if normalizer == "all" else None
        if valid is not None:
            student = student[valid]
            teacher = teacher[valid]

        log_p = F.logsigmoid(student)
        log_not_p = F.logsigmoid(-student)
        q = torch.sigmoid(teacher)
        not_q = torch.sigmoid(-teacher)  # 1 - q without the cancellation of 1 - sigmoid(t)

        cross_entropy = -(q * log_p + not_q * log_not_p)
        if beta != 0:
            # q * log q from the logits: 0 * (-inf) cannot occur because logsigmoid is finite.
            entropy = -(q * F.logsigmoid(teacher) + not_q * F.logsigmoid(-teacher))
            divergence = cross_entropy - beta * entropy
        else:
            divergence = cross_entropy
        weight = _adaptive_weight(divergence, gamma)

        balanced_ce = -(alpha * q * log_p + (1.0 - alpha) * not_q * log_not_p)
        total = (weight * balanced_ce).sum()
        power_sum = q.pow(power).sum() if all_rows_power is None else all_rows_power
        return total / power_sum.clamp_min(1.0)


REDUCTIONS = ("batch", "image")
# Options of a ``type: adl`` entry and their defaults (the released configs' values, docs/methods.md §2.5).
OPTIONS: dict[str, Any] = {
    "alpha": 0.5,
    "beta": 0.0,
    "gamma": 2.0,
    "power": 1.8,
    "reduction": "batch",
    "normalizer": "valid",
}


class AdaptiveDistillationTerm(DistillationLoss):
    """Adaptive distillation loss between student and teacher classification logits.

    Args:
        name: prefix of the returned key (``"<name>_cls"``, by default ``"loss_adl_cls"``).
        weight: factor applied by the distiller.
        alpha: weight of the positive term of the balanced cross-entropy.
        beta: entropy coefficient in the code's convention (``beta_paper = 1 - beta``).
        gamma: focusing exponent of the adaptive weight.
        power: exponent of the teacher probabilities in the normaliser.
        reduction: ``"batch"`` (one normaliser for the batch) or ``"image"`` (mean of per-image
            losses).
        normalizer: ``"valid"`` or ``"all"`` rows in the normaliser (see
            :func:`adaptive_distillation_loss`).
    """

    needs_teacher_predictions = True

    def __init__(
        self,
        *,
        name: str = "loss_adl",
        weight: float = 1.0,
        alpha: float = 0.5,
        beta: float = 0.0,
        gamma: float = 2.0,
        power: float = 1.8,
        reduction: str = "batch",
        normalizer: str = "valid",
    ) -> None:
        super().__init__(name=name, weight=weight)
        if reduction not in REDUCTIONS:
            raise ValueError(f"AdaptiveDistillationTerm: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.alpha, self.beta, self.gamma, self.power = float(alpha), float(beta), float(gamma), float(power)
        self.reduction = reduction
        self.normalizer = normalizer
        # A one-element call runs the loss's own argument checks now rather than at the first step.
        self._loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, dtype=torch.bool))

    def _loss(self, student_logits: Tensor, teacher_logits: Tensor, valid: Tensor) -> Tensor:
        return adaptive_distillation_loss(
            student_logits,
            teacher_logits,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            power=self.power,
            valid=valid,
            normalizer=self.normalizer,
        )

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
        """``{"cls": loss}`` (unweighted) for one batch.

        Student logits ``(N, R, K)`` and teacher logits ``(N, R, K)`` come from each model's
        ``flatten_predictions``; ``targets`` only serve the RetinaNet ignore mask.
        """
        if teacher.predictions is None or teacher.model is None:
            raise ConfigError(f"distillation term {self.name!r} needs the teacher's predictions and detector")
        student_logits = student.model.flatten_predictions(student.predictions)[0]
        teacher_logits = teacher.model.flatten_predictions(teacher.predictions)[0]
        check_same_prediction_shape(student_logits, teacher_logits, term=self.name)
        valid = student.model.classification_valid_mask(student.predictions, targets)
        num_classes = student_logits.shape[-1]
        if self.reduction == "batch":
            loss = self._loss(
                student_logits.reshape(-1, num_classes), teacher_logits.reshape(-1, num_classes), valid.reshape(-1)
            )
        else:
            per_image = [self._loss(s, t, v) for s, t, v in zip(student_logits, teacher_logits, valid)]
            loss = torch.stack(per_image).mean()
        return {"cls": loss}


def build_adl_term(
    options: dict[str, Any], *, student: nn.Module, teacher: nn.Module
) -> AdaptiveDistillationTerm:
    """The ``adl`` term of ``distill.losses``.

    Options (defaults of the released configs): ``alpha`` 0.5, ``beta`` 0.0, ``gamma`` 2.0,
    ``power`` 1.8, ``reduction`` batch, ``normalizer`` valid (``all``: the original op), ``weight``
    1.0, ``name`` loss_adl. Teacher and student must be the same detector type with the same
    strides/anchors/classes, otherwise :class:`ConfigError`.
    """
    resolved = resolve_options(options, OPTIONS, term="adl")
    check_same_layout(student, teacher, term="adl")
    try:
        return AdaptiveDistillationTerm(**resolved)
    except ValueError as exc:
        raise ConfigError(f"distill.losses entry of type 'adl': {exc}") from None
