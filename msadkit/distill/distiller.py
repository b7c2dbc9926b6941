"""A student detector trained against a frozen teacher with a list of distillation losses.

The teacher is deliberately *not* a submodule: it is absent from ``state_dict()`` (a student
checkpoint holds only the student), from ``parameters()`` (the optimiser and DDP never see it) and
from Lightning's checkpoints, so a resumed run never overwrites the student with the teacher. It is
frozen, kept in eval mode whatever ``train()`` is called with, run under ``torch.no_grad()`` and
moved to the student's device on first use (docs/methods.md §1.6 caveats, §4).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from msadkit.modeling.detection_model import DetectionModel
from msadkit.modeling.detectors.dense_detector import DenseDetector
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs

__all__ = [
    "Targets",
    "LossDict",
    "DistillationTeacher",
    "DistillationLoss",
    "Distiller",
    "freeze",
    "term_ramp",
    "RAW_SUFFIX",
]

# What a term receives as ground truth (one dict per image: "boxes" (M, 4), "labels" (M,)) and
# what it returns (loss name suffix -> scalar).
Targets = list[dict[str, Tensor]]
LossDict = dict[str, Tensor]

# Suffix of the logged unweighted value of a distillation loss (``loss_msad_feature_raw``).
RAW_SUFFIX = "_raw"


class DistillationTeacher(Protocol):
    """A frozen teacher: ``distillation_outputs(images, image_sizes, need_predictions)``."""

    def distillation_outputs(
        self, images: Tensor, image_sizes: list[tuple[int, int]], *, need_predictions: bool
    ) -> TeacherOutputs: ...


class DistillationLoss(nn.Module):
    """Base class of a distillation loss term; may own parameters (adapters).

    Attributes:
        name: prefix of the loss keys it returns.
        weight: factor applied to every value it returns.
        needs_teacher_predictions: whether the teacher's head must run.
    """

    needs_teacher_predictions: bool = False

    def __init__(self, *, name: str, weight: float = 1.0) -> None:
        super().__init__()
        self.name = name
        self.weight = float(weight)

    def forward(self, student: StudentOutputs, teacher: TeacherOutputs, targets: Targets, iteration: int) -> LossDict:
        raise NotImplementedError


def term_ramp(loss: nn.Module, iteration: int) -> float:
    """The factor a term's own ramp applied at ``iteration``: ``min(1, iteration / ramp_iters)`` for
    a term with a ``ramp_iters`` option (the linear KD ramp, ``msadkit.distill.msad.kd_ramp``), 1.0
    for a term without one or with ``ramp_iters`` 0."""
    ramp_iters = int(getattr(loss, "ramp_iters", 0) or 0)
    return 1.0 if ramp_iters <= 0 else min(1.0, iteration / ramp_iters)


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with every parameter frozen."""
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


class Distiller(DetectionModel):
    """Student + frozen teacher + distillation losses.

    In training mode ``forward`` returns the student's ground-truth losses plus each distillation
    loss (already weighted); in eval mode it returns the student's detections.

    Args:
        student: the detector being trained.
        teacher: a module implementing :class:`DistillationTeacher`; frozen here.
        losses: the distillation terms.

    Attributes:
        iteration: the trainer's global step, set before each forward (ramps survive resume).
        raw_losses: after a training forward, ``<key>_raw`` for each distillation loss: its value
            before the term's weight and ramp, detached (logged beside the weighted value, never
            part of the total loss; absent while the ramp is at 0).
    """

    def __init__(self, *, student: DenseDetector, teacher: nn.Module, losses: list[DistillationLoss]) -> None:
        super().__init__()
        self.student = student
        self.distill_losses = nn.ModuleList(losses)
        # A one-element list hides the teacher from nn.Module registration.
        self._teacher = [freeze(teacher)]
        self.iteration = 0
        self.raw_losses: dict[str, Tensor] = {}

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        return self

    def export_state_dict(self) -> dict[str, Tensor]:
        """The student's weights alone: a plain detector checkpoint."""
        return self.student.state_dict()

    def deployable(self) -> nn.Module:
        """The model to evaluate and ship: the student."""
        return self.student

    def _teacher_on(self, device: torch.device) -> nn.Module:
        teacher = self.teacher
        first = next(teacher.parameters(), None)
        if first is not None and first.device != device:
            teacher.to(device)
        teacher.eval()
        return teacher

    def detect(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """The student's detections (``forward`` in eval mode)."""
        return self.student(images, image_sizes)

    def training_losses(
        self, images: Tensor, image_sizes: list[tuple[int, int]], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """The student's ground-truth losses and every distillation term (``forward`` in training mode);
        the student and the teacher check the batch they read."""
        image_shape = (images.shape[-2], images.shape[-1])
        # The teacher runs first: its no-grad activations are freed before the student's
        # activations (kept for backward) build up, which lowers peak memory.
        teacher = self._teacher_on(images.device)
        need_predictions = any(loss.needs_teacher_predictions for loss in self.distill_losses)
        with torch.no_grad():
            teacher_outputs = teacher.distillation_outputs(images, image_sizes, need_predictions=need_predictions)

        features = self.student.extract_features(images)
        levels = self.student.select_levels(features)
        predictions = self.student.predict(levels)
        losses = dict(self.student.losses(predictions, targets, image_shape))
        student_outputs = StudentOutputs(self.student, levels, predictions, image_shape, image_sizes)
        self.raw_losses = {}
        for loss in self.distill_losses:
            terms = loss(student_outputs, teacher_outputs, targets, self.iteration)
            # A term's values come ramped by the term itself (every value of a term with a ramp).
            ramp = term_ramp(loss, self.iteration)
            for key, value in terms.items():
                name = f"{loss.name}_{key}" if key else loss.name
                losses[name] = value * loss.weight
                if ramp > 0:
                    # What the term measures, before weight and ramp, which would hide it while the
                    # ramp starts; a ramp at 0 leaves nothing to recover.
                    self.raw_losses[f"{name}{RAW_SUFFIX}"] = value.detach() / ramp
        return losses
