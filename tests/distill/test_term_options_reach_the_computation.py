"""Each option of a distillation term, given as a config entry, changes the term's output the way it
says: ADL's alpha/beta/gamma against an independent formula, GID's iou_threshold/top_k/min_box_size
on the general instances the term selected and on its losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from msadkit.distill.registry import build_term
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs
from tests.distill.peer_terms_setup import tiny_fcos

# ADL ---------------------------------------------------------------------------------------------


def _adl_reference(student_rows, teacher_rows, *, alpha, beta, gamma, power=1.8):
    """ADL written out per anchor and class with the math module (the released code's form)."""
    total, normalizer = 0.0, 0.0
    for row_s, row_t in zip(student_rows, teacher_rows):
        for x, t in zip(row_s, row_t):
            p, q = 1 / (1 + math.exp(-x)), 1 / (1 + math.exp(-t))
            ce = -(q * math.log(p) + (1 - q) * math.log(1 - p))
            entropy = -(q * math.log(q) + (1 - q) * math.log(1 - q))
            weight = (1 - math.exp(-(ce - beta * entropy))) ** gamma
            total += -weight * (alpha * q * math.log(p) + (1 - alpha) * (1 - q) * math.log(1 - p))
            normalizer += q**power
    return total / max(normalizer, 1.0)


def _one_level_fcos() -> FCOS:
    return FCOS(backbone=nn.Identity(), head=nn.Identity(), num_classes=2, in_features=("p3",), strides=(8,))


def _predictions(cls: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    n, _, h, w = cls.shape
    return {"cls_logits": [cls], "bbox_reg": [torch.ones(n, 4, h, w)], "centerness": [torch.zeros(n, 1, h, w)]}


@pytest.mark.parametrize(
    "options",
    [
        {"alpha": 0.5, "beta": 0.0, "gamma": 2.0},
        {"alpha": 0.9, "beta": 0.0, "gamma": 2.0},
        {"alpha": 0.5, "beta": 0.7, "gamma": 2.0},
        {"alpha": 0.5, "beta": 0.0, "gamma": 0.5},
        {"alpha": 0.2, "beta": 1.0, "gamma": 3.0},
    ],
)
def test_adl_alpha_beta_gamma_reach_the_loss(options):
    model = _one_level_fcos()
    torch.manual_seed(3)
    student_logits = torch.randn(2, 2, 2, 2) * 2
    teacher_logits = torch.randn(2, 2, 2, 2) * 3 + 1
    student = StudentOutputs(model, [], _predictions(student_logits), (16, 16))
    teacher = TeacherOutputs([], _predictions(teacher_logits), model)
    term = build_term({"type": "adl", **options}, student=model, teacher=model)
    value = term(student, teacher, [], 0)["cls"].item()

    rows = lambda x: [r for i in range(2) for r in x[i].permute(1, 2, 0).reshape(4, 2).tolist()]  # noqa: E731
    assert value == pytest.approx(_adl_reference(rows(student_logits), rows(teacher_logits), **options), rel=1e-5)
    # And the option matters here: the default settings give another value.
    default = build_term({"type": "adl"}, student=model, teacher=model)(student, teacher, [], 0)["cls"].item()
    if options != {"alpha": 0.5, "beta": 0.0, "gamma": 2.0}:
        assert abs(value - default) > 1e-4 * abs(default)


# GID ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gid_setting():
    student, teacher = tiny_fcos(8, seed=0, wide_boxes=True), tiny_fcos(8, seed=1, wide_boxes=True)
    torch.manual_seed(5)
    images = torch.randn(2, 3, 96, 96)
    levels = student.select_levels(student.extract_features(images))
    student_out = StudentOutputs(student, levels, student.predict(levels), (96, 96))
    teacher_out = teacher.distillation_outputs(images, [(96, 96)] * 2, need_predictions=True)
    return student, teacher, student_out, teacher_out


def _run_gid(setting, **options):
    """The term's losses and the general instances it selected on the way."""
    student, teacher, student_out, teacher_out = setting
    term = build_term({"type": "gid", **options}, student=student, teacher=teacher)
    selected = []
    select = term.select

    def recording_select(*args, **kwargs):
        instances = select(*args, **kwargs)
        selected.extend(instances)
        return instances

    term.select = recording_select
    with torch.no_grad():
        losses = term(student_out, teacher_out, [], 0)
    return losses, selected


def test_gid_top_k_caps_the_instances_per_image_and_keeps_the_best(gid_setting):
    _, many = _run_gid(gid_setting, top_k=10)
    losses_one, one = _run_gid(gid_setting, top_k=1)
    assert all(len(gi.boxes) == 10 for gi in many), [len(gi.boxes) for gi in many]
    assert all(len(gi.boxes) == 1 for gi in one)
    for best, ranked in zip(one, many):
        # The single instance is the top-scored one of the longer list.
        assert torch.equal(best.boxes[0], ranked.boxes[ranked.scores.argmax()])
    losses_many, _ = _run_gid(gid_setting, top_k=10)
    assert losses_one["relation"].item() != pytest.approx(losses_many["relation"].item())


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.7])
def test_gid_iou_threshold_bounds_the_overlap_of_selected_instances(gid_setting, threshold):
    _, selected = _run_gid(gid_setting, top_k=5000, iou_threshold=threshold)
    for gi in selected:
        overlaps = box_iou(gi.boxes, gi.boxes).fill_diagonal_(0)
        assert overlaps.max().item() <= threshold + 1e-6
    counts = [len(gi.boxes) for gi in selected]
    _, looser = _run_gid(gid_setting, top_k=5000, iou_threshold=min(1.0, threshold + 0.3))
    # A looser threshold suppresses less: at least as many instances, strictly more at low thresholds.
    assert sum(len(gi.boxes) for gi in looser) >= sum(counts)
    if threshold < 0.5:
        assert sum(len(gi.boxes) for gi in looser) > sum(counts)


def test_gid_min_box_size_drops_smaller_boxes(gid_setting):
    _, all_sizes = _run_gid(gid_setting, top_k=100, min_box_size=0.0)
    sides = torch.cat([torch.minimum(gi.boxes[:, 2] - gi.boxes[:, 0], gi.boxes[:, 3] - gi.boxes[:, 1]) for gi in all_sizes])
    cut = float(sides.median())
    _, large = _run_gid(gid_setting, top_k=100, min_box_size=cut)
    for gi in large:
        assert (gi.boxes[:, 2] - gi.boxes[:, 0] >= cut).all() and (gi.boxes[:, 3] - gi.boxes[:, 1] >= cut).all()
    assert sum(len(gi.boxes) for gi in large) < sum(len(gi.boxes) for gi in all_sizes)


def test_gid_pre_nms_top_k_and_score_mode_reach_the_selection(gid_setting):
    _, capped = _run_gid(gid_setting, top_k=5000, pre_nms_top_k=6)
    _, uncapped = _run_gid(gid_setting, top_k=5000)
    assert all(1 <= len(gi.boxes) <= 6 for gi in capped)
    assert sum(len(gi.boxes) for gi in uncapped) > sum(len(gi.boxes) for gi in capped)
    _, by_max_abs = _run_gid(gid_setting, top_k=10, score_mode="max_abs_diff")
    _, by_diff_of_max = _run_gid(gid_setting, top_k=10, score_mode="diff_of_max")
    assert any(
        not torch.equal(a.scores, b.scores) or not torch.equal(a.boxes, b.boxes)
        for a, b in zip(by_max_abs, by_diff_of_max)
    )


def test_gid_selection_order_reaches_the_selection(gid_setting):
    """top_k_first takes the pre-NMS top-k before dropping small boxes, so fewer remain."""
    common = {"top_k": 5000, "pre_nms_top_k": 40, "min_box_size": 0.0}
    _, everything = _run_gid(gid_setting, **common)
    sides = torch.cat([torch.minimum(gi.boxes[:, 2] - gi.boxes[:, 0], gi.boxes[:, 3] - gi.boxes[:, 1]) for gi in everything])
    common["min_box_size"] = float(sides.median())
    _, filter_first = _run_gid(gid_setting, **common, selection_order="filter_first")
    _, top_k_first = _run_gid(gid_setting, **common, selection_order="top_k_first")
    assert sum(len(gi.boxes) for gi in top_k_first) < sum(len(gi.boxes) for gi in filter_first)
