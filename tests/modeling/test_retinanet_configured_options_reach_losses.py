"""Non-default RetinaNet settings (focal alpha/gamma, IoU thresholds, GIoU box loss) change what they
claim to change, and the anchor-layout mismatch message names the setting and both anchor counts."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from msadkit.modeling.detectors.anchor_matching import BACKGROUND, IGNORE
from tests.tiny_detectors import one_level_retinanet

LOGITS = [[0.3, -1.2], [5.0, 5.0], [-0.5, 2.0]]  # per anchor, per class
ONE_BOX = {"boxes": torch.tensor([[-5.0, -5.0, 5.0, 5.0]]), "labels": torch.tensor([1])}


def predictions(deltas: list[list[float]] | None = None) -> dict[str, list[torch.Tensor]]:
    # With A = 1 channel k of the logits is class k and x runs over the three anchors.
    deltas = deltas if deltas is not None else [[0.0] * 4] * 3
    cls = torch.tensor(LOGITS).t().reshape(1, 2, 1, 3)
    reg = torch.tensor(deltas).t().reshape(1, 4, 1, 3)
    return {"cls_logits": [cls], "bbox_deltas": [reg]}


def focal_term(logit: float, target: int, alpha: float, gamma: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    if target == 1:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.6, 1.0), (0.25, 0.5), (0.9, 2.0)])
def test_classification_loss_uses_the_configured_focal_alpha_and_gamma(alpha, gamma):
    model = one_level_retinanet(focal_alpha=alpha, focal_gamma=gamma)
    losses = model.losses(predictions(), [ONE_BOX], image_shape=(4, 12))
    # Anchor 0 is foreground class 1 (IoU 1), anchor 1 ignored (IoU 0.43), anchor 2 background (IoU 0.11).
    by_hand = sum(focal_term(x, t, alpha, gamma) for x, t in zip(LOGITS[0], [0, 1])) + sum(
        focal_term(x, 0, alpha, gamma) for x in LOGITS[2]
    )
    reference = sigmoid_focal_loss(
        torch.tensor([LOGITS[0], LOGITS[2]]),
        torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
        alpha=alpha,
        gamma=gamma,
        reduction="sum",
    ).item()
    assert by_hand == pytest.approx(reference, rel=1e-5)
    assert losses["loss_cls"].item() == pytest.approx(by_hand, rel=1e-5)
    # The default parameters would give another value, so the check above sees the settings.
    default = sum(focal_term(x, t, 0.25, 2.0) for x, t in zip(LOGITS[0], [0, 1])) + sum(
        focal_term(x, 0, 0.25, 2.0) for x in LOGITS[2]
    )
    assert abs(default - by_hand) > 1e-3


def test_giou_box_loss_is_a_scalar_summed_over_foreground_anchors():
    model = one_level_retinanet(box_loss="giou")
    # Boxes on anchors 0 and 2 make both foreground (IoU 1); anchor 1 overlaps each by 60/140: ignored.
    targets = [{"boxes": torch.tensor([[-5.0, -5.0, 5.0, 5.0], [3.0, -5.0, 13.0, 5.0]]), "labels": torch.tensor([1, 0])}]
    # Anchor 0 shifted right by 0.2 widths: (-3,-5,7,5), IoU 80/120 with its box, enclosing box equal to
    # the union, GIoU loss 1/3. Anchor 2 shifted by half a width and half a height: (8,0,18,10),
    # intersection 25, union 175, enclosing box (3,-5,18,10) of 225, GIoU 1/7 - 50/225, loss 6/7 + 2/9.
    deltas = [[0.2, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]
    losses = model.losses(predictions(deltas), targets, image_shape=(4, 12))
    assert losses["loss_box_reg"].dim() == 0
    assert losses["loss_box_reg"].item() == pytest.approx((1 / 3 + 6 / 7 + 2 / 9) / 2, rel=1e-5)


# Anchors against the box (0,0,10,10): IoU 1, 0.5, 100/220 = 0.4545, 1/3, 0.
ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 0.0, 10.0, 20.0],
        [0.0, 0.0, 10.0, 22.0],
        [0.0, 0.0, 10.0, 30.0],
        [50.0, 50.0, 60.0, 60.0],
    ]
)
BOX = torch.tensor([[0.0, 0.0, 10.0, 10.0]])


def test_default_thresholds_split_foreground_ignored_background():
    model = one_level_retinanet()
    assert model.match(ANCHORS, BOX).tolist() == [0, 0, IGNORE, BACKGROUND, BACKGROUND]


def test_configured_iou_thresholds_move_anchors_between_foreground_ignored_and_background():
    # High threshold 0.45: the 0.4545 anchor turns foreground.
    model = one_level_retinanet(iou_thresholds=(0.4, 0.45))
    assert model.iou_thresholds == (0.4, 0.45)
    assert model.match(ANCHORS, BOX).tolist() == [0, 0, 0, BACKGROUND, BACKGROUND]
    assert model.assign_boxes(ANCHORS, BOX).tolist() == [True, True, True, False, False]
    # Low threshold 0.3: the 1/3 anchor turns ignored; high 0.6: the 0.5 anchor turns ignored.
    model = one_level_retinanet(iou_thresholds=(0.3, 0.6))
    assert model.match(ANCHORS, BOX).tolist() == [0, IGNORE, IGNORE, IGNORE, BACKGROUND]


def test_anchor_layout_mismatch_message_names_the_setting_and_both_anchor_counts():
    student = one_level_retinanet(aspect_ratios=(1.0,))
    teacher = one_level_retinanet(aspect_ratios=(0.5, 1.0, 2.0))
    assert student.layout_mismatch(teacher) == (
        "their anchors differ (model.retinanet.anchor_base_sizes / aspect_ratios): the student has "
        "1 anchors per location, the teacher 3"
    )
    assert student.layout_mismatch(one_level_retinanet(aspect_ratios=(1.0,))) is None
