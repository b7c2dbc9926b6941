"""The MSAD term's temperature reaches its L1 loss, where it scales the value (with MSE it cancels)."""

from __future__ import annotations

import pytest
import torch

from msadkit.distill.msad import MSADFeatureLoss
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs


def _value(term, student_levels, teacher_levels, iteration):
    return term(
        StudentOutputs(None, student_levels, None, (8, 8)), TeacherOutputs(teacher_levels, None, None), [], iteration
    )[""].item()


def test_l1_value_is_alpha_times_temperature_times_the_mean_gap():
    # alpha * T^2 * mean|s/T - t/T| = alpha * T * mean|s - t|; one level, gap 1.5 everywhere.
    student, teacher = [torch.full((1, 2, 2, 2), 2.0)], [torch.full((1, 2, 2, 2), 0.5)]
    for temperature in (2.0, 5.0):
        term = MSADFeatureLoss(
            student_channels=2, teacher_channels=2, alpha=0.2, temperature=temperature, ramp_iters=0, num_levels=1
        )
        assert _value(term, student, teacher, 0) == pytest.approx(0.2 * temperature * 1.5)


def test_mse_value_does_not_depend_on_the_temperature():
    # alpha * T^2 * mean((s - t)^2 / T^2) = alpha * mean((s - t)^2): 0.2 * 2.25.
    student, teacher = [torch.full((1, 2, 2, 2), 2.0)], [torch.full((1, 2, 2, 2), 0.5)]
    for temperature in (2.0, 5.0):
        term = MSADFeatureLoss(
            student_channels=2,
            teacher_channels=2,
            loss_type="mse",
            alpha=0.2,
            temperature=temperature,
            ramp_iters=0,
            num_levels=1,
        )
        assert _value(term, student, teacher, 0) == pytest.approx(0.2 * 2.25)
