"""The MSAD feature term's defaults (the paper's), argument boundaries and error texts."""

import pytest
import torch
from torch import nn

from msadkit.distill.msad import MSADFeatureLoss, msad_feature_loss


def test_the_term_defaults_are_the_papers():
    term = MSADFeatureLoss(student_channels=8, teacher_channels=8)
    assert (term.name, term.weight, term.loss_type) == ("loss_msad_feature", 1.0, "l1")
    assert (term.alpha, term.temperature, term.ramp_iters, term.num_levels) == (0.2, 3.0, 500, 5)
    assert term.adapters is None
    narrower = MSADFeatureLoss(student_channels=4, teacher_channels=8)
    assert len(narrower.adapters) == 5


def test_boundaries_of_temperature_and_ramp():
    MSADFeatureLoss(student_channels=8, teacher_channels=8, temperature=0.5, ramp_iters=0)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        MSADFeatureLoss(student_channels=8, teacher_channels=8, temperature=0.0)
    with pytest.raises(ValueError, match="ramp_iters must be >= 0, got -1"):
        MSADFeatureLoss(student_channels=8, teacher_channels=8, ramp_iters=-1)
    student, teacher = [torch.ones(1, 2, 2, 2)], [torch.zeros(1, 2, 2, 2)]
    # L1 with T = 0.5: alpha * T^2 * mean|s/T - t/T| = 0.2 * 0.25 * 2 = 0.1
    assert msad_feature_loss(student, teacher, temperature=0.5).item() == pytest.approx(0.1)


def test_level_errors_name_the_level_the_shapes_and_the_fix():
    good = torch.zeros(1, 4, 2, 2)
    with pytest.raises(ValueError, match=r"level 0: features must be \(N, C, H, W\), got student \(4, 2, 2\)"):
        msad_feature_loss([torch.zeros(4, 2, 2)], [good])
    with pytest.raises(ValueError, match=r"features must be \(N, C, H, W\).*teacher \(4, 2, 2\)"):
        msad_feature_loss([good], [torch.zeros(4, 2, 2)])
    with pytest.raises(
        ValueError,
        match=r"level 0: student has 3 channels but teacher has 4 .*; pass adapters \(1x1 convs, see make_feature_adapters\)",
    ):
        msad_feature_loss([torch.zeros(1, 3, 2, 2)], [good])
    with pytest.raises(ValueError, match=r"student has 5 channels but teacher has 4 .*; the adapter's output channels do not match the teacher"):
        msad_feature_loss([torch.zeros(1, 3, 2, 2)], [good], adapters=[nn.Conv2d(3, 5, 1)])


def test_the_terms_options_reach_its_loss():
    from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs

    torch.manual_seed(0)
    student_levels = [torch.randn(1, 4, 4, 4) for _ in range(3)]
    teacher_levels = [torch.randn(1, 4, 4, 4) for _ in range(3)]
    term = MSADFeatureLoss(
        student_channels=4, teacher_channels=4, loss_type="mse", alpha=0.7, temperature=2.0, ramp_iters=10, num_levels=3
    )
    student = StudentOutputs(None, student_levels, None, (32, 32))
    teacher = TeacherOutputs(teacher_levels, None, None)
    value = term(student, teacher, [], 5)[""]
    expected = msad_feature_loss(student_levels, teacher_levels, loss_type="mse", alpha=0.7, temperature=2.0, ramp=0.5)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    assert value.item() != pytest.approx(msad_feature_loss(student_levels, teacher_levels, ramp=0.5).item(), rel=1e-3)
    assert len(MSADFeatureLoss(student_channels=2, teacher_channels=4, num_levels=3).adapters) == 3
