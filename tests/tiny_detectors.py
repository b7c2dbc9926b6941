"""Tiny FCOS/RetinaNet pieces shared by the distillation-term and detector tests."""

from __future__ import annotations

import torch
from torch import nn

from msadkit.modeling.detectors.anchors import AnchorGenerator
from msadkit.modeling.detectors.retinanet import RetinaNet
from msadkit.modeling.heads.retinanet_head import RetinaNetHead

LEVELS = ("p3", "p4", "p5", "p6", "p7")


class TinyPyramid(nn.Module):
    """Strided convs giving ``p3..p7`` (strides 8..128) with ``channels`` channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.stem = nn.Conv2d(3, channels, 8, stride=8)
        self.downs = nn.ModuleList(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(4))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.relu(self.stem(images))
        features = {"p3": x}
        for name, down in zip(LEVELS[1:], self.downs):
            x = down(x)
            features[name] = x
        return features


def one_level_retinanet(
    aspect_ratios: tuple[float, ...] = (1.0,), head: nn.Module | None = None, **kwargs
) -> RetinaNet:
    """One level of 10 px anchors every 4 px (anchor centres at ``(4j, 4i)``), two classes.

    On a 1x3 map the square anchors are (-5,-5,5,5), (-1,-5,9,5), (3,-5,13,5). ``head`` defaults to
    a RetinaNet head on 4 channels without tower convs; ``kwargs`` go to :class:`RetinaNet`.
    """
    generator = AnchorGenerator(sizes=((10.0,),), aspect_ratios=aspect_ratios, strides=(4,))
    if head is None:
        head = RetinaNetHead(in_channels=4, num_classes=2, num_anchors=len(aspect_ratios), num_convs=0)
    return RetinaNet(
        backbone=nn.Identity(),
        head=head,
        num_classes=2,
        in_features=("p3",),
        strides=(4,),
        anchor_generator=generator,
        **kwargs,
    )
