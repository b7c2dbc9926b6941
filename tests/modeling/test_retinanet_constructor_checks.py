"""RetinaNet construction: which settings it refuses (with what message), which parts it accepts, and
that a box coder it is given is the one its losses use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msadkit.modeling.detectors.anchors import AnchorGenerator
from msadkit.modeling.detectors.box_coder import BoxCoder
from msadkit.modeling.detectors.retinanet import RetinaNet
from msadkit.modeling.heads.retinanet_head import RetinaNetHead
from tests.tiny_detectors import one_level_retinanet


class BareHead(nn.Module):
    """A head that does not declare ``num_anchors`` or ``num_classes``."""

    def forward(self, levels: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        return {"cls_logits": [x[:, :2] for x in levels], "bbox_deltas": [x[:, :4] for x in levels]}


def test_a_head_without_declared_counts_is_accepted():
    model = one_level_retinanet(head=BareHead())
    assert model.anchor_generator.num_anchors_per_location == 1 and model.num_classes == 2


def test_a_head_with_other_classes_is_refused_naming_both_counts():
    head = RetinaNetHead(in_channels=4, num_classes=3, num_anchors=1, num_convs=0)
    with pytest.raises(ValueError, match=r"^RetinaNet: head has 3 classes, detector 2$"):
        one_level_retinanet(head=head)


def test_a_head_with_other_anchor_count_is_refused_naming_both_counts():
    head = RetinaNetHead(in_channels=4, num_classes=2, num_anchors=3, num_convs=0)
    message = r"^RetinaNet: head predicts 3 anchors per location but the anchor generator makes 1$"
    with pytest.raises(ValueError, match=message):
        one_level_retinanet(head=head)


def test_anchor_generator_on_other_strides_is_refused_naming_both():
    generator = AnchorGenerator(sizes=((10.0,),), aspect_ratios=(1.0,), strides=(8,))
    head = RetinaNetHead(in_channels=4, num_classes=2, num_anchors=1, num_convs=0)
    with pytest.raises(ValueError, match=r"anchor_generator strides \(8,\) differ from strides \(4,\)"):
        RetinaNet(
            backbone=nn.Identity(), head=head, num_classes=2, in_features=("p3",), strides=(4,), anchor_generator=generator
        )


@pytest.mark.parametrize("thresholds", [(0.0, 0.5), (0.5, 0.5), (0.4, 1.0), (0.0, 0.0), (1.0, 1.0)])
def test_iou_thresholds_on_the_closed_bounds_are_accepted(thresholds):
    assert one_level_retinanet(iou_thresholds=thresholds).iou_thresholds == thresholds


@pytest.mark.parametrize("thresholds", [(-0.1, 0.5), (0.6, 0.5), (0.4, 1.5), (0.4, 2.0)])
def test_iou_thresholds_outside_the_bounds_are_refused(thresholds):
    message = rf"iou_thresholds must satisfy 0 <= low <= high <= 1, got \({thresholds[0]}, {thresholds[1]}\)"
    with pytest.raises(ValueError, match=message):
        one_level_retinanet(iou_thresholds=thresholds)


def test_unknown_box_loss_message_lists_the_choices():
    with pytest.raises(ValueError, match=r"box_loss must be one of \('smooth_l1', 'giou'\), got 'l2'"):
        one_level_retinanet(box_loss="l2")


def test_given_box_coder_is_the_one_the_losses_decode_with():
    # Anchors on a 1x3 map: (-5,-5,5,5), (-1,-5,9,5), (3,-5,13,5); the box sits on anchor 0.
    cls = torch.zeros(1, 2, 1, 3)
    reg = torch.zeros(1, 4, 1, 3)
    reg[0, 0, 0, 0] = 2.0  # dx: with wx = 10 a shift of 0.2 widths, with wx = 1 of 2 widths
    targets = [{"boxes": torch.tensor([[-5.0, -5.0, 5.0, 5.0]]), "labels": torch.tensor([1])}]
    model = one_level_retinanet(box_loss="giou", box_coder=BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)))
    assert model.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    loss = model.losses({"cls_logits": [cls], "bbox_deltas": [reg]}, targets, image_shape=(4, 12))["loss_box_reg"]
    # (-3,-5,7,5) against (-5,-5,5,5): IoU 80/120, enclosing box equal to the union: loss 1/3.
    assert loss.item() == pytest.approx(1 / 3, rel=1e-5)
    default = one_level_retinanet(box_loss="giou")
    loss = default.losses({"cls_logits": [cls], "bbox_deltas": [reg]}, targets, image_shape=(4, 12))["loss_box_reg"]
    # (15,-5,25,5): no overlap, enclosing box (-5,-5,25,5) of 300 against a union of 200: loss 1 + 1/3.
    assert loss.item() == pytest.approx(4 / 3, rel=1e-5)
