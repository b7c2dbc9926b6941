"""The Distiller logs each distillation term's value before its weight and ramp (``<key>_raw``),
detached and outside the losses the total sums."""

from __future__ import annotations

import pytest
import torch

from msadkit.distill.distiller import RAW_SUFFIX, DistillationLoss, Distiller, term_ramp
from msadkit.distill.msad import kd_ramp
from msadkit.distill.registry import build_term
from tests.distill.peer_terms_setup import tiny_pair

IMAGES = torch.randn(2, 3, 64, 64)
TARGETS = [
    {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
]


class RampedMean(DistillationLoss):
    """Mean of the student's first level, ramped like msad_feature (its own ramp, inside the term)."""

    def __init__(self, *, weight: float, ramp_iters: int) -> None:
        super().__init__(name="loss_ramped", weight=weight)
        self.ramp_iters = ramp_iters

    def forward(self, student, teacher, targets, iteration):
        value, ramp = student.levels[0].abs().mean(), kd_ramp(iteration, self.ramp_iters)
        return {"": value * ramp, "second": (value * 0 + 3.0) * ramp}


def test_the_linear_ramp_is_the_msad_ramp():
    class Term(torch.nn.Module):
        ramp_iters = 50

    for iteration in (0, 1, 7, 49, 50, 51, 1000):
        assert term_ramp(Term(), iteration) == kd_ramp(iteration, 50)
    assert term_ramp(torch.nn.Module(), 10) == 1.0  # a term without a ramp


@pytest.mark.parametrize("iteration", [5, 20])
def test_raw_values_undo_weight_and_ramp_and_stay_out_of_the_losses(iteration):
    student, teacher = tiny_pair("fcos")
    term = RampedMean(weight=2.0, ramp_iters=10)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    distiller.iteration = iteration
    losses = distiller(IMAGES, None, TARGETS)
    assert not any(key.endswith(RAW_SUFFIX) for key in losses)
    factor = 2.0 * min(1.0, iteration / 10)
    raw = distiller.raw_losses
    assert set(raw) == {"loss_ramped_raw", "loss_ramped_second_raw"}
    assert raw["loss_ramped_raw"].item() == pytest.approx(losses["loss_ramped"].item() / factor, rel=1e-6)
    assert raw["loss_ramped_second_raw"].item() == pytest.approx(3.0, rel=1e-6)
    assert all(not value.requires_grad for value in raw.values())


def test_a_ramp_at_zero_logs_no_raw_value():
    student, teacher = tiny_pair("fcos")
    distiller = Distiller(student=student, teacher=teacher, losses=[RampedMean(weight=1.0, ramp_iters=10)]).train()
    distiller.iteration = 0  # the ramp starts at 0: nothing to divide by
    losses = distiller(IMAGES, None, TARGETS)
    assert distiller.raw_losses == {}
    assert losses["loss_ramped"].item() == 0.0


def test_msad_feature_raw_value_is_its_unramped_loss():
    student, teacher = tiny_pair("fcos", student_channels=8, teacher_channels=8)
    term = build_term({"type": "msad_feature", "weight": 0.5, "ramp_iters": 100}, student=student, teacher=teacher)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    distiller.iteration = 100
    full = distiller(IMAGES, None, TARGETS)["loss_msad_feature"].item() / 0.5
    distiller.iteration = 25
    quarter = distiller(IMAGES, None, TARGETS)
    assert quarter["loss_msad_feature"].item() == pytest.approx(full * 0.25 * 0.5, rel=1e-5)
    assert distiller.raw_losses["loss_msad_feature_raw"].item() == pytest.approx(full, rel=1e-5)
