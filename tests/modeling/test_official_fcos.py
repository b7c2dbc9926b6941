"""The MSAD code's FCOS computation behind config keys (docs/deviations.md), checked by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msadkit.config import load_config
from msadkit.errors import ConfigError
from msadkit.modeling.detectors.fcos_losses import ltrb_giou_loss
from msadkit.modeling.detectors.postprocess import select_detections, select_detections_nms_first
from msadkit.modeling.heads.tower import conv_tower
from msadkit.modeling.registry import build_model


def test_giou_smoothing_by_hand():
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 2.0, 2.0], [3.0, 0.5, 0.5, 0.5]])
    # Row 0: areas 4 and 9, intersection 2x2 = 4, union 9, enclosing 3x3 = 9 (no GIoU penalty).
    # Row 1: areas 4 and 3.5, intersection 1.5 x 1 = 1.5, union 6, enclosing 4 x 2 = 8.
    plain = torch.tensor([1 - 4 / 9, 1 - (1.5 / 6 - 2 / 8)])
    smoothed = torch.tensor([1 - 5 / 10, 1 - (2.5 / 7 - 2 / 8)])
    assert torch.allclose(ltrb_giou_loss(pred, target), plain)
    assert torch.allclose(ltrb_giou_loss(pred, target, smoothing=1.0), smoothed)


def test_giou_smoothing_lowers_the_loss_of_small_boxes_most():
    # A box one stride wide predicted 20 % too small on each side vs a box ten strides wide.
    small, large = torch.tensor([[0.4, 0.4, 0.4, 0.4]]), torch.tensor([[4.0, 4.0, 4.0, 4.0]])
    for target, pred in ((torch.full((1, 4), 0.5), small), (torch.full((1, 4), 5.0), large)):
        ratio = float(ltrb_giou_loss(pred, target, smoothing=1.0) / ltrb_giou_loss(pred, target))
        # Intersection a^2 and union b^2: (b^2 - a^2) / (b^2 + 1) over (b^2 - a^2) / b^2.
        b2 = float((2 * target[0, 0]) ** 2)
        assert ratio == pytest.approx(b2 / (b2 + 1), rel=1e-5)


def test_a_conv_bias_before_group_norm_is_not_redundant():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 6, 6)
    tower = conv_tower(64, 1, "GN", conv_bias=True)
    assert tower[0].bias is not None
    with torch.no_grad():
        tower[0].bias.zero_()
        without = tower(x)
        # A bias that differs within a GroupNorm group (32 groups, 2 channels each) survives it.
        tower[0].bias.copy_(torch.arange(64.0) % 2)
        with_bias = tower(x)
        assert (with_bias - without).abs().max() > 0.1
        # A bias constant within every group is removed by the group mean, as for BatchNorm.
        tower[0].bias.copy_((torch.arange(64.0) // 2) * 0.3)
        # Up to rounding that grows with the bias: it puts a group's mean up to R = max|x| / std of
        # the group away from zero, and GroupNorm's float32 mean and variance (one pass in some
        # kernels) lose up to R^2 rounding units relative to the normalised output (AVX2 kernels
        # gave 2.75e-5 here, AVX-512 ones 4e-6; the bound is 2e-4, the effect of a real bias > 0.1).
        groups = tower[0](x).reshape(2, 32, -1)
        ratio = (groups.abs().amax(-1) / groups.std(-1)).amax()
        tolerance = float(ratio**2 * torch.finfo(torch.float32).eps * without.abs().max())
        assert torch.allclose(tower(x), without, rtol=0, atol=tolerance)


def _fcos_config(*overrides):
    return load_config("msad/fcos_high_demo", ["model.backbone.weights=null", *overrides])


def test_fcos_keys_reach_the_model():
    default = build_model(_fcos_config())
    assert default.head.cls_tower[0].bias is None and default.giou_smoothing == 0.0 and default.clip_before_nms
    original = build_model(
        _fcos_config("model.fcos.tower_conv_bias=true", "model.fcos.giou_smoothing=1", "model.fcos.clip_before_nms=false")
    )
    convs = [m for m in original.head.bbox_tower if isinstance(m, nn.Conv2d)]
    assert convs and all(conv.bias is not None for conv in convs)
    assert original.head.bbox_pred.bias is None and original.giou_smoothing == 1.0 and not original.clip_before_nms
    with pytest.raises(ConfigError, match="config key 'model.fcos.tower_conv_bias' .* must be of type bool \\(or null\\), got 3"):
        build_model(_fcos_config("model.fcos.tower_conv_bias=3"))


def test_official_teacher_config_uses_the_smoothing_in_its_loss():
    config = load_config("msad/official/msad_teacher_w025", ["model.backbone.weights=null", "model.num_classes=2"])
    teacher = build_model(config)
    assert teacher.detector.giou_smoothing == 1.0 and teacher.head.cls_tower[0].bias is not None
    assert config["model"]["pixel_format"] == "bgr" and config["model"]["pixel_std"] == [1.0, 1.0, 1.0]


def test_nms_first_order_by_hand():
    labels = torch.zeros(2, dtype=torch.int64)
    # Box 0 hangs 20 px out of the 100 x 100 image; unclipped it overlaps box 1 by IoU
    # 40*40 / (60*40) = 0.67, clipped it equals box 1 (IoU 1).
    boxes = torch.tensor([[60.0, 0.0, 120.0, 40.0], [60.0, 0.0, 100.0, 40.0]])
    scores = torch.tensor([0.9, 0.8])
    kwargs = dict(nms_thresh=0.7, detections_per_image=100)
    assert select_detections(boxes, scores, labels, (100, 100), **kwargs)["scores"].tolist() == pytest.approx([0.9])
    original = select_detections_nms_first(boxes, scores, labels, (100, 100), **kwargs)
    assert original["scores"].tolist() == pytest.approx([0.9, 0.8])
    assert original["boxes"].tolist() == [[60.0, 0.0, 100.0, 40.0]] * 2
    # A box entirely outside the image takes the only slot before clipping empties it.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [110.0, 0.0, 130.0, 20.0]])
    scores = torch.tensor([0.9, 0.95])
    kwargs = dict(nms_thresh=0.6, detections_per_image=1)
    assert select_detections(boxes, scores, labels, (100, 100), **kwargs)["scores"].tolist() == pytest.approx([0.9])
    assert len(select_detections_nms_first(boxes, scores, labels, (100, 100), **kwargs)["scores"]) == 0
    # Ties at the last place are all kept (the code's kthvalue); slicing keeps exactly the count.
    tied = select_detections_nms_first(
        torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]]),
        torch.tensor([0.9, 0.5, 0.5]),
        torch.zeros(3, dtype=torch.int64),
        (100, 100),
        nms_thresh=0.6,
        detections_per_image=2,
    )
    assert len(tied["scores"]) == 3
