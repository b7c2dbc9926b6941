"""ADL's argument checks, boundaries and the term's wiring of power, per-image masks and names."""

import pytest
import torch
from torch import nn

from msadkit.distill.adl import AdaptiveDistillationTerm, adaptive_distillation_loss
from msadkit.distill.registry import build_term
from msadkit.errors import ConfigError
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs


def test_argument_errors_name_the_function_and_the_shapes():
    with pytest.raises(ValueError, match=r"^adaptive_distillation_loss: student_logits and teacher_logits must have the same shape"):
        adaptive_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"^adaptive_distillation_loss: logits must have shape \(N, K\) \(anchors x classes\)"):
        adaptive_distillation_loss(torch.zeros(2, 3, 1), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match=r"must be floating point"):
        adaptive_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"must be floating point"):
        adaptive_distillation_loss(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3))
    with pytest.raises(
        ValueError, match=r"^adaptive_distillation_loss: valid must be a bool tensor of shape \(N,\) = \(4,\), got torch.bool of shape \(3,\)"
    ):
        adaptive_distillation_loss(torch.zeros(4, 3), torch.zeros(4, 3), valid=torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("alpha, power", [(0.0, 1.8), (1.0, 1.8), (0.5, 0.0), (0.5, 0.5)])
def test_boundary_values_are_accepted(alpha, power):
    torch.manual_seed(0)
    value = adaptive_distillation_loss(torch.randn(4, 3), torch.randn(4, 3), alpha=alpha, power=power)
    assert torch.isfinite(value)


def _one_level():
    return FCOS(backbone=nn.Identity(), head=nn.Identity(), num_classes=2, in_features=("p3",), strides=(8,))


def _outputs(model, student_logits, teacher_logits):
    def predictions(cls):
        n, _, h, w = cls.shape
        return {"cls_logits": [cls], "bbox_reg": [torch.ones(n, 4, h, w)], "centerness": [torch.zeros(n, 1, h, w)]}

    return StudentOutputs(model, [], predictions(student_logits), (16, 16)), TeacherOutputs([], predictions(teacher_logits), model)


def test_the_power_option_reaches_the_normaliser():
    model = _one_level()
    torch.manual_seed(1)
    student, teacher = _outputs(model, torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2) + 1)
    rows = lambda x: x.permute(0, 2, 3, 1).reshape(-1, 2)  # noqa: E731
    for power in (1.0, 3.0):
        term = build_term({"type": "adl", "power": power}, student=model, teacher=model)
        expected = adaptive_distillation_loss(rows(student.predictions["cls_logits"][0]), rows(teacher.predictions["cls_logits"][0]), power=power)
        assert term(student, teacher, [], 0)["cls"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_default_term_name_and_weight():
    term = AdaptiveDistillationTerm()
    assert (term.name, term.weight) == ("loss_adl", 1.0)


def test_a_teacher_without_predictions_is_refused_with_the_terms_name():
    model = _one_level()
    student, teacher = _outputs(model, torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2))
    term = build_term({"type": "adl"}, student=model, teacher=model)
    with pytest.raises(ConfigError, match="loss_adl"):
        term(student, TeacherOutputs([], None, model), [], 0)
