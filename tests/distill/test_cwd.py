"""The "cwd" term: channel-wise distillation against a float64 reference written from the paper's
equation, on features and on logits, its options, its errors, and one training step on tiny FCOS
and RetinaNet students."""

from __future__ import annotations

import math

import pytest
import torch

from msadkit.distill.cwd import OPTIONS, ChannelWiseTerm
from msadkit.distill.registry import TERMS, build_term
from msadkit.errors import ConfigError, InputError
from tests.distill.peer_terms_setup import (
    conv1x1,
    outputs,
    random_maps,
    run_against_reference,
    tiny_fcos,
    tiny_retinanet,
    train_once,
)


def reference_cwd_value(student_maps, teacher_maps, tau, loss_weight):
    """The CWD sum written out per image, channel and position with the math module."""
    total = 0.0
    for s_map, t_map in zip(student_maps, teacher_maps):
        n, c = s_map.shape[:2]
        level = 0.0
        for i in range(n):
            for j in range(c):
                s, t = s_map[i, j].flatten().tolist(), t_map[i, j].flatten().tolist()
                z_s = sum(math.exp(v / tau) for v in s)
                z_t = sum(math.exp(v / tau) for v in t)
                for a, b in zip(s, t):
                    p_t, p_s = math.exp(b / tau) / z_t, math.exp(a / tau) / z_s
                    level += p_t * math.log(p_t / p_s)
        total += tau**2 * level / (n * c)
    return loss_weight * total


def reference_cwd_tensor(student_maps, teacher_maps, tau, loss_weight):
    """The same sum with torch, one channel at a time, for the gradients: KL(q || p) as cross-entropy
    minus entropy, with the softmax written as exp / sum."""
    total = 0.0
    for s_map, t_map in zip(student_maps, teacher_maps):
        n, c = s_map.shape[:2]
        for i in range(n):
            for j in range(c):
                s, t = s_map[i, j].flatten() / tau, t_map[i, j].flatten() / tau
                q = torch.exp(t) / torch.exp(t).sum()
                log_p = s - torch.log(torch.exp(s).sum())
                total = total + tau**2 * ((q * torch.log(q)).sum() - (q * log_p).sum()) / (n * c)
    return loss_weight * total


def test_registered_with_mmrazors_fpn_defaults():
    assert TERMS["cwd"] is not None
    assert OPTIONS == {"tau": 1.0, "loss_weight": 10.0, "maps": "features"}
    term = build_term({"type": "cwd"}, student=tiny_fcos(8), teacher=tiny_fcos(8))
    settings = (term.name, term.tau, term.loss_weight, term.maps, term.adapters)
    assert settings == ("loss_cwd", 1.0, 10.0, "features", None)
    assert term.needs_teacher_predictions is False


@pytest.mark.parametrize(("tau", "loss_weight"), [(1.0, 10.0), (2.5, 3.0), (0.5, 1.0)])
def test_value_and_gradients_match_the_reference_in_float64(tau, loss_weight):
    term = ChannelWiseTerm(student_channels=3, teacher_channels=5, num_levels=3, tau=tau, loss_weight=loss_weight)
    term = term.double()
    student_maps = random_maps(3, seed=0, grad=True)
    teacher_maps = random_maps(5, seed=1)

    def adapted(maps, adapters):
        return [conv1x1(s, a.weight, a.bias) for s, a in zip(maps, adapters)]

    def reference(inputs, twin):
        # The reference sees the adapted student maps; their gradients reach the inputs and the adapters.
        return reference_cwd_tensor(adapted(inputs, twin.adapters), teacher_maps, tau, loss_weight)

    value, expected, _ = run_against_reference(term, student_maps, teacher_maps, reference)
    plain = [a.detach() for a in adapted(student_maps, term.adapters)]
    exact = reference_cwd_value(plain, teacher_maps, tau, loss_weight)
    assert value.item() == pytest.approx(exact, rel=1e-9)
    assert expected.item() == pytest.approx(exact, rel=1e-9)


def test_tau_changes_the_value_as_the_equation_says():
    student_maps, teacher_maps = random_maps(4, seed=0), random_maps(4, seed=1)
    values = {}
    for tau in (1.0, 4.0):
        term = build_term({"type": "cwd", "tau": tau}, student=tiny_fcos(4), teacher=tiny_fcos(4)).double()
        values[tau] = term(*outputs(student_maps, teacher_maps), [], 0)[""].item()
        assert values[tau] == pytest.approx(reference_cwd_value(student_maps, teacher_maps, tau, 10.0), rel=1e-9)
    assert abs(values[4.0] - values[1.0]) > 1e-3 * values[1.0]
    # Maps equal up to a per-channel shift have equal spatial softmaxes: nothing to distil.
    shifted = [t + torch.arange(4, dtype=t.dtype)[None, :, None, None] for t in teacher_maps]
    term = build_term({"type": "cwd"}, student=tiny_fcos(4), teacher=tiny_fcos(4)).double()
    assert term(*outputs(shifted, teacher_maps), [], 0)[""].item() == pytest.approx(0.0, abs=1e-12)


def test_maps_logits_distils_the_classification_maps_and_asks_for_the_teachers_head():
    student, teacher = tiny_retinanet(8, seed=0), tiny_retinanet(16, seed=1)
    spec = {"type": "cwd", "maps": "logits", "tau": 2.0, "loss_weight": 5.0}
    term = build_term(spec, student=student, teacher=teacher)
    assert term.needs_teacher_predictions is True and term.adapters is None
    student_logits, teacher_logits = random_maps(27, seed=2), random_maps(27, seed=3)
    feature_maps = random_maps(8, seed=4)  # must not be used
    student_out, teacher_out = outputs(
        feature_maps,
        random_maps(16, seed=5),
        student_predictions={"cls_logits": student_logits},
        teacher_predictions={"cls_logits": teacher_logits},
    )
    value = term.double()(student_out, teacher_out, [], 0)[""].item()
    assert value == pytest.approx(reference_cwd_value(student_logits, teacher_logits, 2.0, 5.0), rel=1e-9)
    with pytest.raises(ConfigError, match="needs the teacher's predictions"):
        term(student_out, outputs(feature_maps, feature_maps)[1], [], 0)
    with pytest.raises(ConfigError, match=r"maps: logits compares .* the student has 3 classes and the teacher 5"):
        build_term({"type": "cwd", "maps": "logits"}, student=student, teacher=tiny_retinanet(16, num_classes=5))
    # FCOS (K channels) against RetinaNet (9 anchors x K channels): refused at the first batch.
    fcos_term = build_term({"type": "cwd", "maps": "logits"}, student=tiny_fcos(8), teacher=teacher)
    student_out.predictions = {"cls_logits": random_maps(3, seed=6)}
    with pytest.raises(InputError, match=r"'loss_cwd': level 0: the student has 3 channels and the teacher 27"):
        fcos_term.double()(student_out, teacher_out, [], 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 2.0}, r"unknown option\(s\) temperature"),
        ({"tau": "warm"}, r"option 'tau' must be a number, got 'warm'"),
        ({"maps": 1}, r"option 'maps' must be a string"),
        ({"maps": "heads"}, r"'cwd': maps must be one of \('features', 'logits'\), got 'heads'"),
        ({"on": "logits"}, r"unknown option\(s\) on"),
        ({"weight": -2.0}, r"weight must be >= 0, got -2.0"),
        ({"tau": 0.0}, r"'cwd': tau must be > 0, got 0.0"),
        ({"loss_weight": -1.0}, r"'cwd': loss_weight must be >= 0"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        build_term({"type": "cwd", **options}, student=tiny_fcos(8), teacher=tiny_fcos(16))


def test_impossible_pairs_are_refused_naming_the_term():
    with pytest.raises(ConfigError, match=r"type 'cwd': the student distils 3 levels"):
        build_term({"type": "cwd"}, student=tiny_fcos(8, levels=("p3", "p4", "p5")), teacher=tiny_fcos(8))
    term = ChannelWiseTerm(student_channels=4, teacher_channels=4, num_levels=3)
    teacher_maps = random_maps(4, dtype=torch.float32)
    teacher_maps[2] = torch.zeros(2, 4, 1, 2)
    with pytest.raises(InputError, match=r"'loss_cwd': level 2: .* differ in batch or spatial size"):
        term(*outputs(random_maps(4, dtype=torch.float32), teacher_maps), [], 0)


def test_one_training_step_on_the_logits_reaches_the_students_classifier():
    # On the features (the default) the step is checked with the other feature terms
    # (test_peer_feature_terms.py).
    _, student = train_once("retinanet", {"type": "cwd", "maps": "logits"}, "loss_cwd")
    assert float(student.head.cls_score.weight.grad.abs().sum()) > 0
