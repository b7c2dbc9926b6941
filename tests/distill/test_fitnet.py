"""The "fitnet" term: FPN mimicking through 1x1 adapters against a float64 reference, its options,
its errors, and one training step on tiny FCOS and RetinaNet students."""

from __future__ import annotations

import pytest
import torch

from msadkit.distill.fitnet import OPTIONS, FitNetTerm
from msadkit.distill.registry import TERMS, build_term
from msadkit.errors import ConfigError, InputError
from tests.distill.peer_terms_setup import conv1x1, outputs, random_maps, run_against_reference, tiny_fcos


def reference_fitnet(student_maps, teacher_maps, adapters, loss_weight):
    """``loss_weight * sum_l mean_{n,o,h,w} (b_o + sum_c W_oc s_nchw - t_nohw)^2``, summed element by
    element and divided by the count."""
    total = 0.0
    for s, t, (weight, bias) in zip(student_maps, teacher_maps, adapters):
        squared = (conv1x1(s, weight, bias) - t) ** 2
        total = total + squared.sum() / squared.numel()
    return loss_weight * total


def test_registered_with_the_ld_defaults():
    assert TERMS["fitnet"] is not None
    assert OPTIONS == {"loss_weight": 2.0, "adapt_equal_widths": True}
    term = build_term({"type": "fitnet"}, student=tiny_fcos(8), teacher=tiny_fcos(16))
    assert (term.name, term.weight, term.loss_weight) == ("loss_fitnet", 1.0, 2.0)
    assert len(term.adapters) == 5 and term.adapters[0].weight.shape == (16, 8, 1, 1)


@pytest.mark.parametrize("loss_weight", [2.0, 0.7])
def test_value_and_gradients_match_the_reference_in_float64(loss_weight):
    term = FitNetTerm(student_channels=3, teacher_channels=5, num_levels=3, loss_weight=loss_weight).double()
    student_maps = random_maps(3, seed=0, grad=True)
    teacher_maps = random_maps(5, seed=1)

    def reference(inputs, twin):
        return reference_fitnet(inputs, teacher_maps, [(a.weight, a.bias) for a in twin.adapters], loss_weight)

    value, expected, _ = run_against_reference(term, student_maps, teacher_maps, reference)
    assert value.item() == pytest.approx(expected.item(), rel=1e-9)


def test_equal_widths_keep_the_adapters_unless_told_otherwise():
    student, teacher = tiny_fcos(8, seed=0), tiny_fcos(8, seed=1)
    assert build_term({"type": "fitnet"}, student=student, teacher=teacher).adapters is not None
    plain = build_term({"type": "fitnet", "adapt_equal_widths": False}, student=student, teacher=teacher)
    assert plain.adapters is None
    # Without adapters the loss is the plain mean squared error of the maps.
    student_maps, teacher_maps = random_maps(4, seed=0), random_maps(4, seed=1)
    expected = 2.0 * sum(((s - t) ** 2).mean() for s, t in zip(student_maps, teacher_maps))
    value = plain.double()(*outputs(student_maps, teacher_maps), [], 0)[""]
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    # A narrower student still gets adapters: the maps cannot be compared otherwise.
    narrow = build_term({"type": "fitnet", "adapt_equal_widths": False}, student=tiny_fcos(4), teacher=teacher)
    assert len(narrow.adapters) == 5


def test_loss_weight_scales_the_loss_and_weight_is_left_to_the_distiller():
    student, teacher = tiny_fcos(8), tiny_fcos(16)
    base = build_term({"type": "fitnet"}, student=student, teacher=teacher)
    other = build_term({"type": "fitnet", "loss_weight": 5.0, "weight": 3.0}, student=student, teacher=teacher)
    other.load_state_dict(base.state_dict())
    student_maps, teacher_maps = random_maps(8, dtype=torch.float32), random_maps(16, dtype=torch.float32, seed=1)
    batch = outputs(student_maps, teacher_maps)
    assert other(*batch, [], 0)[""].item() == pytest.approx(2.5 * base(*batch, [], 0)[""].item(), rel=1e-6)
    assert other.weight == 3.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lossweight": 1.0}, r"unknown option\(s\) lossweight"),
        ({"loss_weight": "high"}, r"option 'loss_weight' must be a number, got 'high'"),
        ({"adapt_equal_widths": 1}, r"option 'adapt_equal_widths' must be a boolean"),
        ({"weight": -1.0}, r"weight must be >= 0, got -1.0"),
        ({"loss_weight": -0.5}, r"'fitnet': loss_weight must be >= 0, got -0.5"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        build_term({"type": "fitnet", **options}, student=tiny_fcos(8), teacher=tiny_fcos(16))


def test_impossible_pairs_are_refused_naming_the_term():
    four_levels = tiny_fcos(8, levels=("p3", "p4", "p5", "p6"))
    with pytest.raises(ConfigError, match=r"type 'fitnet': the student distils 4 levels .* the teacher gives 5"):
        build_term({"type": "fitnet"}, student=four_levels, teacher=tiny_fcos(16))
    term = FitNetTerm(student_channels=3, teacher_channels=5, num_levels=3)
    student_maps, teacher_maps = random_maps(3, dtype=torch.float32), random_maps(5, dtype=torch.float32)
    teacher_maps[1] = torch.zeros(2, 5, 3, 3)
    with pytest.raises(InputError, match=r"'loss_fitnet': level 1: the student feature map \(2, 3, 2, 3\) and"):
        term(*outputs(student_maps, teacher_maps), [], 0)
    with pytest.raises(InputError, match=r"'loss_fitnet': the student gives 3 feature maps and the teacher 2"):
        term(*outputs(student_maps, teacher_maps[:2]), [], 0)
