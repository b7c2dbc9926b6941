"""ADL term: adaptive distillation of the classification logits (docs/methods.md §2.2, §2.3).

The student's classification logits at every location/anchor of every level imitate the teacher's
through :func:`msadkit.distill.adl.adaptive_distillation_loss`. As in the released code only
classification is distilled; box regression keeps learning from the (pseudo-)ground truth alone.
RetinaNet anchors that the student's own assignment ignores (best IoU in ``[0.4, 0.5)``) are left
out, which is why pseudo-labels matter on unlabeled images: they decide that ignore region. FCOS
has no ignore region and every location counts.

Reduction: by default the loss is summed over the whole batch and divided by the batch's sum of
``q^power`` (``reduction: batch``), which is what the original code does on each GPU (its
normaliser sums the teacher probabilities of all images on the GPU). Under DDP the gradients are
averaged across processes, which matches the original ``1 / NUM_GPUS`` loss scale.
``reduction: image`` instead averages the per-image losses, each with its own normaliser.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from msadkit.distill.adl import adaptive_distillation_loss
from msadkit.errors import ConfigError
from msadkit.modeling.dense_detector import DenseDetector
from msadkit.modeling.distillation.distiller import DistillationLoss
from msadkit.modeling.distillation.outputs import StudentOutputs, TeacherOutputs
from msadkit.modeling.distillation.terms.layout import check_same_layout, check_same_prediction_shape
from msadkit.modeling.distillation.terms.options import resolve_options
from msadkit.modeling.distillation.terms.registry import register_term
from msadkit.modeling.retinanet import RetinaNet

__all__ = ["AdaptiveDistillationTerm", "REDUCTIONS", "classification_valid_mask", "build_adl_term"]

REDUCTIONS = ("batch", "image")


def classification_valid_mask(
    model: DenseDetector, predictions: dict[str, list[Tensor]], targets: list[dict[str, Tensor]]
) -> Tensor:
    """``(N, R)`` bool: the locations/anchors that take part in the classification loss.

    RetinaNet: every anchor its assignment to ``targets`` does not ignore. Other detectors (FCOS):
    every location.
    """
    logits = predictions["cls_logits"]
    if isinstance(model, RetinaNet):
        anchors = torch.cat(model.anchors(model.feature_shapes(predictions)))
        return model.assign(anchors, targets).valid_mask
    num_locations = sum(x.shape[-2] * x.shape[-1] for x in logits)
    return torch.ones(logits[0].shape[0], num_locations, dtype=torch.bool, device=logits[0].device)


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
    ) -> None:
        super().__init__(name=name, weight=weight)
        if reduction not in REDUCTIONS:
            raise ValueError(f"AdaptiveDistillationTerm: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.alpha, self.beta, self.gamma, self.power = float(alpha), float(beta), float(gamma), float(power)
        self.reduction = reduction
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
        )

    def forward(
        self,
        student: StudentOutputs,
        teacher: TeacherOutputs,
        targets: list[dict[str, Tensor]],
        iteration: int,
    ) -> dict[str, Tensor]:
        """``{"cls": loss}`` (unweighted) for one batch.

        Student logits ``(N, R, K)`` and teacher logits ``(N, R, K)`` come from each model's
        ``flatten_predictions``; ``targets`` only serve the RetinaNet ignore mask.
        """
        if teacher.predictions is None or teacher.model is None:
            raise ConfigError(f"distillation term {self.name!r} needs the teacher's predictions and detector")
        student_logits = student.model.flatten_predictions(student.predictions)[0]
        teacher_logits = teacher.model.flatten_predictions(teacher.predictions)[0]
        check_same_prediction_shape(student_logits, teacher_logits, term=self.name)
        valid = classification_valid_mask(student.model, student.predictions, targets)
        num_classes = student_logits.shape[-1]
        if self.reduction == "batch":
            loss = self._loss(
                student_logits.reshape(-1, num_classes), teacher_logits.reshape(-1, num_classes), valid.reshape(-1)
            )
        else:
            per_image = [self._loss(s, t, v) for s, t, v in zip(student_logits, teacher_logits, valid)]
            loss = torch.stack(per_image).mean()
        return {"cls": loss}


@register_term("adl")
def build_adl_term(
    options: dict[str, Any], *, student: nn.Module, teacher: nn.Module, config: dict[str, Any]
) -> AdaptiveDistillationTerm:
    """The ``adl`` term of ``distill.losses``.

    Options (defaults of the released configs): ``alpha`` 0.5, ``beta`` 0.0, ``gamma`` 2.0,
    ``power`` 1.8, ``reduction`` batch, ``weight`` 1.0, ``name`` loss_adl. Teacher and student must be
    the same detector type with the same strides/anchors/classes, otherwise :class:`ConfigError`.
    """
    resolved = resolve_options(
        options, {"alpha": 0.5, "beta": 0.0, "gamma": 2.0, "power": 1.8, "reduction": "batch"}, term="adl"
    )
    check_same_layout(student, teacher, term="adl")
    try:
        return AdaptiveDistillationTerm(**resolved)
    except ValueError as exc:
        raise ConfigError(f"distill.losses entry of type 'adl': {exc}") from None
