"""ADL's layout and prediction-shape errors name the term, so a config with several terms points at the right one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msadkit.distill.registry import build_term
from msadkit.errors import ConfigError, InputError
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs


def _fcos(num_classes: int) -> FCOS:
    return FCOS(backbone=nn.Identity(), head=nn.Identity(), num_classes=num_classes, in_features=("p3",), strides=(8,))


def _predictions(n: int, k: int, h: int, w: int) -> dict:
    return {
        "cls_logits": [torch.zeros(n, k, h, w)],
        "bbox_reg": [torch.ones(n, 4, h, w)],
        "centerness": [torch.zeros(n, 1, h, w)],
    }


def test_a_teacher_with_other_classes_is_refused_naming_the_adl_type():
    with pytest.raises(
        ConfigError,
        match=r"^distill.losses type 'adl' compares predictions location by location.*3 classes and the teacher 2",
    ):
        build_term({"type": "adl"}, student=_fcos(3), teacher=_fcos(2))


def test_predictions_on_other_grids_are_refused_naming_the_term():
    model = _fcos(2)
    term = build_term({"type": "adl", "name": "loss_adl_main"}, student=model, teacher=model)
    student = StudentOutputs(model, [], _predictions(1, 2, 2, 2), (16, 16))
    teacher = TeacherOutputs([], _predictions(1, 2, 3, 3), model)
    with pytest.raises(
        InputError, match=r"^distillation term 'loss_adl_main': student predictions have shape \(1, 4, 2\)"
    ):
        term(student, teacher, [], 0)
