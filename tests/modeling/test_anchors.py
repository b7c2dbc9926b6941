"""Anchor generation and box coding, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from msadkit.modeling.detectors.anchors import DEFAULT_ANCHOR_SIZES, AnchorGenerator, retinanet_anchor_sizes
from msadkit.modeling.detectors.box_coder import BoxCoder
from msadkit.modeling.detectors.dense_detector import permute_to_nhwk


def test_retinanet_anchor_sizes_are_four_strides_times_octaves():
    sizes = retinanet_anchor_sizes()
    assert len(sizes) == 5
    for level, stride in enumerate((8, 16, 32, 64, 128)):
        expected = [4 * stride, 4 * stride * 2 ** (1 / 3), 4 * stride * 2 ** (2 / 3)]
        assert sizes[level] == pytest.approx(expected)
    assert sizes[0] == pytest.approx((32.0, 40.3175, 50.7968), abs=1e-3)
    assert DEFAULT_ANCHOR_SIZES == sizes


def test_default_generator_shapes_per_level():
    generator = AnchorGenerator()
    assert generator.num_anchors_per_location == 9
    shapes = [(4, 6), (2, 3), (1, 2), (1, 1), (1, 1)]
    anchors = generator(shapes)
    assert [tuple(a.shape) for a in anchors] == [(h * w * 9, 4) for h, w in shapes]
    assert all(a.dtype == torch.float32 for a in anchors)
    # Every anchor of a level has one of the 9 areas size**2 (3 sizes x 3 ratios each).
    areas = (anchors[1][:, 2] - anchors[1][:, 0]) * (anchors[1][:, 3] - anchors[1][:, 1])
    expected = torch.tensor([64.0, 64 * 2 ** (1 / 3), 64 * 2 ** (2 / 3)]) ** 2
    assert torch.allclose(areas.view(-1, 3, 3), expected.view(1, 3, 1).expand(6, 3, 3), rtol=1e-5)


def test_first_level_centres_widths_and_heights_by_hand():
    generator = AnchorGenerator(sizes=((32.0,),), aspect_ratios=(0.5, 1.0, 2.0), strides=(8,), offset=0.0)
    (anchors,) = generator([(2, 3)])
    assert anchors.shape == (2 * 3 * 3, 4)
    # ratio = h / w with area 32**2: ratio 0.5 -> w = 32*sqrt(2), h = 32/sqrt(2).
    half_w = [16 * math.sqrt(2), 16.0, 16 / math.sqrt(2)]
    half_h = [16 / math.sqrt(2), 16.0, 16 * math.sqrt(2)]
    expected = []
    for y in range(2):
        for x in range(3):
            for a in range(3):
                cx, cy = 8.0 * x, 8.0 * y
                expected.append([cx - half_w[a], cy - half_h[a], cx + half_w[a], cy + half_h[a]])
    assert torch.allclose(anchors, torch.tensor(expected), atol=1e-4)
    # First anchor is centred at (0, 0), the square one is (-16, -16, 16, 16).
    assert torch.allclose(anchors[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))


def test_sizes_vary_before_ratios_within_a_location():
    generator = AnchorGenerator(sizes=((10.0, 20.0),), aspect_ratios=(1.0, 4.0), strides=(16,))
    (anchors,) = generator([(1, 1)])
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    assert torch.allclose(widths, torch.tensor([10.0, 5.0, 20.0, 10.0]))
    assert torch.allclose(heights, torch.tensor([10.0, 20.0, 20.0, 40.0]))


def test_offset_and_stride_override_move_centres():
    generator = AnchorGenerator(sizes=((8.0,), (16.0,)), aspect_ratios=(1.0,), strides=(8, 16), offset=0.5)
    first, second = generator([(2, 2), (1, 1)])
    centres = (first[:, :2] + first[:, 2:]) / 2
    assert torch.allclose(centres, torch.tensor([[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]]))
    assert torch.allclose(second, torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    # A low-resolution branch reuses the same sizes with other strides.
    first_lr, _ = generator([(2, 2), (1, 1)], strides=(4, 8))
    centres_lr = (first_lr[:, :2] + first_lr[:, 2:]) / 2
    assert torch.allclose(centres_lr, torch.tensor([[2.0, 2.0], [6.0, 2.0], [2.0, 6.0], [6.0, 6.0]]))
    assert torch.allclose(first_lr[:, 2] - first_lr[:, 0], torch.full((4,), 8.0))


def test_anchor_order_matches_permute_to_nhwk():
    height, width, num_anchors, stride = 3, 4, 9, 8
    generator = AnchorGenerator(sizes=((32.0, 40.0, 50.0),), strides=(stride,))
    (anchors,) = generator([(height, width)])
    # A fake head output whose channel a (K=1) at (y, x) encodes the triple (y, x, a).
    ys = torch.arange(height).view(1, 1, height, 1).float()
    xs = torch.arange(width).view(1, 1, 1, width).float()
    a = torch.arange(num_anchors).view(1, num_anchors, 1, 1).float()
    head_output = ys * 100 + xs * 10 + a
    flat = permute_to_nhwk(head_output, 1)[0, :, 0]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    anchor_y = centres[:, 1] / stride
    anchor_x = centres[:, 0] / stride
    anchor_a = torch.arange(anchors.shape[0]) % num_anchors
    assert torch.allclose(flat, anchor_y * 100 + anchor_x * 10 + anchor_a.float())
    widths = anchors[:, 2] - anchors[:, 0]
    assert torch.allclose(widths[anchor_a == 4], torch.full(((height * width),), 40.0))


def test_anchors_are_not_in_the_state_dict_and_follow_dtype_changes():
    generator = AnchorGenerator()
    assert list(generator.state_dict()) == []
    generator = generator.to(torch.bfloat16)
    (anchors, *_rest) = generator([(2, 2)] * 5)
    assert anchors.dtype == torch.float32


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="levels"):
        AnchorGenerator(sizes=((32.0,),), strides=(8, 16))
    with pytest.raises(ValueError, match="same"):
        AnchorGenerator(sizes=((32.0,), (64.0, 80.0)), strides=(8, 16))
    with pytest.raises(ValueError, match="aspect_ratios"):
        AnchorGenerator(sizes=((32.0,),), aspect_ratios=(0.0,), strides=(8,))
    with pytest.raises(ValueError, match="feature shapes"):
        AnchorGenerator()([(2, 2)])


def test_encode_by_hand():
    coder = BoxCoder()
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])
    box = torch.tensor([2.0, 4.0, 12.0, 24.0])  # centre (7, 14), size (10, 20)
    deltas = coder.encode(box, anchor)
    assert torch.allclose(deltas, torch.tensor([0.2, 0.9, 0.0, math.log(2.0)]))
    weighted = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode(box, anchor)
    assert torch.allclose(weighted, torch.tensor([2.0, 9.0, 0.0, 5 * math.log(2.0)]))


def test_encode_decode_round_trip():
    generator = torch.Generator().manual_seed(0)
    anchors_xy = torch.rand(50, 2, generator=generator) * 100
    anchors = torch.cat([anchors_xy, anchors_xy + 5 + torch.rand(50, 2, generator=generator) * 60], dim=1)
    boxes_xy = torch.rand(50, 2, generator=generator) * 100
    boxes = torch.cat([boxes_xy, boxes_xy + 1 + torch.rand(50, 2, generator=generator) * 80], dim=1)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights=weights)
        decoded = coder.decode(coder.encode(boxes, anchors), anchors)
        assert torch.allclose(decoded, boxes, atol=1e-3)


def test_decode_by_hand_clamps_scale_and_returns_float32():
    coder = BoxCoder()
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.5, -0.5, 0.0, 100.0]], dtype=torch.bfloat16)
    box = coder.decode(deltas, anchor)
    assert box.dtype == torch.float32
    # Centre (10, 0); width 10; height 10 * exp(log(1000/16)) = 625.
    assert torch.allclose(box, torch.tensor([[5.0, -312.5, 15.0, 312.5]]), atol=1e-3)
    # Broadcasting: one anchor, several deltas.
    many = coder.decode(torch.zeros(3, 4), anchor)
    assert torch.allclose(many, anchor.expand(3, 4))
