"""Cutting a dense head between its tower convs (what CrossKD needs): ``tower_features`` then
``predict_from`` reproduces ``forward`` at every cut, and the cut maps are the convs' outputs before
their ReLU."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from msadkit.modeling.heads.fcos_head import FCOSHead
from msadkit.modeling.heads.retinanet_head import RetinaNetHead
from msadkit.modeling.heads.tower import run_tower, tower_blocks


def _heads():
    torch.manual_seed(0)
    fcos_gn = FCOSHead(in_channels=8, num_classes=3, num_convs=3, norm="GN")
    fcos_plain = FCOSHead(in_channels=8, num_classes=3, num_convs=2, norm="", tower_conv_bias=True)
    retina = RetinaNetHead(in_channels=8, num_classes=3, num_anchors=2, num_convs=3)
    for head in (fcos_gn, fcos_plain, retina):
        for param in head.parameters():
            nn.init.normal_(param, std=0.3)  # far from the near-zero initialisation, so every path matters
    return [(fcos_gn, 3), (fcos_plain, 2), (retina, 3)]


LEVELS = [torch.randn(2, 8, 6, 5, generator=torch.Generator().manual_seed(1)), torch.randn(2, 8, 3, 3)]


@pytest.mark.parametrize("index", range(3))
def test_predict_from_the_cut_equals_forward_at_every_cut(index):
    head, convs = _heads()[index]
    assert head.num_tower_convs == convs
    expected = head(LEVELS)
    for cut in range(convs + 1):
        got = head.predict_from(head.tower_features(LEVELS, cut), cut)
        assert got.keys() == expected.keys()
        for key in expected:
            for a, b in zip(got[key], expected[key]):
                assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (cut, key)


def test_cut_maps_are_the_conv_outputs_before_their_relu():
    head, _ = _heads()[0]
    x = LEVELS[0]
    blocks = tower_blocks(head.cls_tower)
    assert [type(layer) for layer in blocks[0]] == [nn.Conv2d, nn.GroupNorm, nn.ReLU]
    conv, norm, _ = blocks[1]
    after_one = F.relu(blocks[0][1](blocks[0][0](x)))
    expected = norm(conv(after_one))  # conv 2 with its norm, no ReLU
    cls_map, box_map = head.tower_features([x], 2)[0]
    assert torch.allclose(cls_map, expected, atol=1e-6)
    assert (cls_map < 0).any()  # not activated
    assert not torch.allclose(box_map, cls_map)
    # Cut 0: the level itself for both towers.
    cls_map, box_map = head.tower_features([x], 0)[0]
    assert cls_map is x and box_map is x
    # The cut map is not changed by finishing the head (no in-place ReLU on it).
    cut = head.tower_features([x], 3)
    kept = cut[0][0].clone()
    head.predict_from(cut, 3)
    assert torch.equal(cut[0][0], kept)


def test_run_tower_checks_its_range_and_gradients_pass_through():
    head, _ = _heads()[2]
    assert torch.allclose(run_tower(head.cls_subnet, LEVELS[1]), head.cls_subnet(LEVELS[1]))
    with pytest.raises(ValueError, match="start <= stop"):
        run_tower(head.cls_subnet, LEVELS[1], start=2, stop=1)
    with pytest.raises(ValueError, match="stop <= 3"):
        run_tower(head.cls_subnet, LEVELS[1], stop=4)
    x = LEVELS[1].clone().requires_grad_()
    for param in head.parameters():
        param.requires_grad_(False)
    head.predict_from(head.tower_features([x], 1), 1)["cls_logits"][0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
