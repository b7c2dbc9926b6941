"""The "pkd" term: per-channel standardisation over batch and positions, then a halved MSE, against
a float64 reference and the Pearson-correlation identity; its options, its errors, and one training
step on tiny FCOS and RetinaNet students."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msadkit.distill.pkd import OPTIONS, PKDTerm, pkd_map_loss
from msadkit.distill.registry import TERMS, build_term
from msadkit.errors import ConfigError, InputError
from tests.distill.peer_terms_setup import conv1x1, outputs, random_maps, run_against_reference, tiny_fcos

SHAPES = ((4, 5), (2, 3), (2, 2), (1, 2), (1, 1))


def reference_pkd_value(student, teacher, eps=1e-6):
    """One level, written out per channel with the math module: standardise each channel over all
    images and positions (unbiased std, plus eps), then half the mean squared difference."""
    n, c, h, w = student.shape

    def standardised(x, channel):
        values = [x[i, channel, y, z] for i in range(n) for y in range(h) for z in range(w)]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return [(v - mean) / (std + eps) for v in values]

    s, t = student.numpy(), teacher.numpy()
    squared = 0.0
    for channel in range(c):
        squared += sum((a - b) ** 2 for a, b in zip(standardised(s, channel), standardised(t, channel)))
    return squared / (n * c * h * w) / 2


def reference_pkd_tensor(student, teacher, eps=1e-6):
    """The same with torch, one channel at a time (``torch.std``), for the gradients."""
    n, c, h, w = student.shape
    total = 0.0
    for channel in range(c):
        s, t = student[:, channel].flatten(), teacher[:, channel].flatten()
        s_hat = (s - s.mean()) / (torch.std(s) + eps)
        t_hat = (t - t.mean()) / (torch.std(t) + eps)
        total = total + ((s_hat - t_hat) ** 2).sum()
    return total / (n * c * h * w) / 2


def test_registered_with_mmrazors_retinanet_defaults():
    assert TERMS["pkd"] is not None
    assert OPTIONS == {"loss_weight": 10.0, "levels": [0, 1, 2, 3], "eps": 1e-6}
    term = build_term({"type": "pkd"}, student=tiny_fcos(8), teacher=tiny_fcos(16))
    assert (term.name, term.loss_weight, term.levels, term.eps) == ("loss_pkd", 10.0, (0, 1, 2, 3), 1e-6)
    assert len(term.adapters) == 4  # one per distilled level only
    assert build_term({"type": "pkd"}, student=tiny_fcos(8), teacher=tiny_fcos(8)).adapters is None


@pytest.mark.parametrize("levels", [[0, 1, 2, 3], [4, 0, 2]])
def test_value_and_gradients_match_the_reference_in_float64(levels):
    term = PKDTerm(student_channels=3, teacher_channels=5, levels=levels, loss_weight=7.0).double()
    student_maps = random_maps(3, shapes=SHAPES[:4] + ((2, 1),), seed=0, grad=True)
    teacher_maps = random_maps(5, shapes=SHAPES[:4] + ((2, 1),), seed=1)

    def adapted(maps, adapters):
        return {level: conv1x1(maps[level], a.weight, a.bias) for level, a in zip(levels, adapters)}

    def reference(inputs, twin):
        student = adapted(inputs, twin.adapters)
        return 7.0 * sum(reference_pkd_tensor(student[level], teacher_maps[level]) for level in levels)

    value, expected, grads = run_against_reference(term, student_maps, teacher_maps, reference, allow_unused=True)
    # Levels left out get no gradient at all.
    assert [g is None for g in grads[:5]] == [level not in levels for level in range(5)]
    student = {level: x.detach() for level, x in adapted(student_maps, term.adapters).items()}
    exact = 7.0 * sum(reference_pkd_value(student[level], teacher_maps[level]) for level in levels)
    assert value.item() == pytest.approx(exact, rel=1e-9)
    assert expected.item() == pytest.approx(exact, rel=1e-9)


def test_without_eps_the_loss_is_one_minus_the_pearson_correlation_per_channel():
    student = random_maps(4, shapes=((3, 5),), batch=3, seed=0)[0]
    teacher = random_maps(4, shapes=((3, 5),), batch=3, seed=1)[0]
    teacher = teacher + 0.8 * student  # correlated, so r is far from 0
    m = 3 * 3 * 5
    correlations = [
        np.corrcoef(student[:, c].flatten().numpy(), teacher[:, c].flatten().numpy())[0, 1] for c in range(4)
    ]
    expected = (1 - 1 / m) * float(np.mean([1 - r for r in correlations]))
    assert pkd_map_loss(student, teacher, eps=0.0).item() == pytest.approx(expected, rel=1e-12)
    # The magnitude of either map does not matter: scale and shift a teacher channel.
    scaled = teacher * torch.tensor([3.0, 0.1, 7.0, 1.0], dtype=teacher.dtype)[None, :, None, None] - 5.0
    assert pkd_map_loss(student, scaled, eps=0.0).item() == pytest.approx(expected, rel=1e-12)


def test_degenerate_maps_give_finite_values_and_gradients():
    # One value per channel: no correlation to imitate, zero loss that still backpropagates.
    single = torch.randn(1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    loss = pkd_map_loss(single, torch.randn(1, 3, 1, 1, dtype=torch.float64))
    loss.backward()
    assert loss.item() == 0.0 and single.grad is not None and torch.equal(single.grad, torch.zeros_like(single))
    # A constant student channel (a dead ReLU) keeps the gradient finite.
    constant = torch.ones(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    loss = pkd_map_loss(constant, torch.randn(2, 3, 2, 2, dtype=torch.float64))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(constant.grad).all()


def test_levels_and_loss_weight_reach_the_computation():
    student_maps, teacher_maps = random_maps(4, shapes=SHAPES, seed=0), random_maps(4, shapes=SHAPES, seed=1)
    per_level = [reference_pkd_value(s, t) for s, t in zip(student_maps, teacher_maps)]
    for options, expected in [
        ({}, 10.0 * sum(per_level[:4])),
        ({"levels": [4, 1], "loss_weight": 2.5}, 2.5 * (per_level[4] + per_level[1])),
        ({"levels": [0, 1, 2, 3, 4], "eps": 0.5}, None),
    ]:
        term = build_term({"type": "pkd", **options}, student=tiny_fcos(4), teacher=tiny_fcos(4)).double()
        value = term(*outputs(student_maps, teacher_maps), [], 0)[""].item()
        if expected is None:
            expected = 10.0 * sum(reference_pkd_value(s, t, eps=0.5) for s, t in zip(student_maps, teacher_maps))
        assert value == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"level": [0]}, r"unknown option\(s\) level"),
        ({"loss_weight": "x"}, r"option 'loss_weight' must be a number, got 'x'"),
        ({"levels": 3}, r"option 'levels' must be a list, got 3"),
        ({"levels": [0, 5]}, r"'pkd': levels must be distinct integers in \[0, 4\] \(the student has 5 levels\), got"),
        ({"levels": [1, 1]}, r"levels must be distinct integers"),
        ({"levels": []}, r"levels must be distinct integers"),
        ({"levels": [0.5]}, r"levels must be distinct integers"),
        ({"weight": -1.0}, r"weight must be >= 0, got -1.0"),
        ({"eps": -1e-3}, r"'pkd': loss_weight and eps must be >= 0"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        build_term({"type": "pkd", **options}, student=tiny_fcos(8), teacher=tiny_fcos(16))


def test_impossible_pairs_are_refused_naming_the_term():
    with pytest.raises(ConfigError, match=r"type 'pkd': the student distils 5 levels .* the teacher gives 4"):
        build_term({"type": "pkd"}, student=tiny_fcos(8), teacher=tiny_fcos(8, levels=("p3", "p4", "p5", "p6")))
    term = PKDTerm(student_channels=4, teacher_channels=4, levels=[0, 1])
    student_maps = random_maps(4, dtype=torch.float32)
    with pytest.raises(InputError, match=r"'loss_pkd': level 0: .* differ in batch or spatial size"):
        term(*outputs(student_maps, [torch.zeros(2, 4, 5, 4)] + student_maps[1:]), [], 0)
    with pytest.raises(ConfigError, match=r"'loss_pkd': levels \[0, 3\] but only 3 level pairs"):
        PKDTerm(student_channels=4, teacher_channels=4, levels=[0, 3])(*outputs(student_maps, student_maps), [], 0)
