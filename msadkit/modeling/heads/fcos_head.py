"""The FCOS head as MSAD uses it (docs/methods.md §1.5)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from msadkit.modeling.heads.tower import TwoTowerHead, conv_tower, init_dense_head

__all__ = ["Scale", "FCOSHead"]


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSHead(TwoTowerHead):
    """Classification and box towers shared across levels, with a learnable scale per level.

    Four 3x3 convs with a norm layer and ReLU per tower; classification logits with a bias set
    from ``prior_prob``; box regression and centerness on the box tower, both without bias (as in
    the MSAD code, unlike AdelaiDet). Box outputs are ``relu(scale_l * reg)``: distances to the box
    sides divided by the level's stride.

    Args:
        in_channels: channels of every input level.
        num_classes: number of foreground classes K.
        num_levels: number of pyramid levels (one ``Scale`` each).
        num_convs: convs per tower.
        norm: norm layer name for ``msadkit.modeling.norm.get_norm`` ("GN", "BN", "" for none).
        prior_prob: initial foreground probability of the classifier.
        tower_conv_bias: the tower convs have a bias (the MSAD code: yes; by default only
            without a norm layer).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_levels: int = 5,
        num_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
        tower_conv_bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = conv_tower(in_channels, num_convs, norm, conv_bias=tower_conv_bias)
        self.bbox_tower = conv_tower(in_channels, num_convs, norm, conv_bias=tower_conv_bias)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, 3, padding=1, bias=False)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1, bias=False)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))

        init_dense_head(self, self.cls_logits, prior_prob)

    def forward(self, levels: list[Tensor]) -> dict[str, list[Tensor]]:
        """Predict on each level.

        Args:
            levels: ``L`` maps ``(N, C, Hi, Wi)``, finest first; ``L`` must not exceed ``num_levels``.

        Returns:
            ``{"cls_logits": [(N, K, Hi, Wi)], "bbox_reg": [(N, 4, Hi, Wi)],
            "centerness": [(N, 1, Hi, Wi)]}``; ``bbox_reg`` is non-negative and in stride units.
        """
        self.check_num_levels(len(levels))
        return self.predict_levels((self.cls_tower(x), self.bbox_tower(x)) for x in levels)

    def check_num_levels(self, num_levels: int) -> None:
        """Raise unless every one of ``num_levels`` levels has its ``Scale``."""
        if num_levels > len(self.scales):
            raise ValueError(f"FCOSHead has {len(self.scales)} level scales but got {num_levels} levels")

    def predict_levels(self, tower_maps: Iterable[tuple[Tensor, Tensor]]) -> dict[str, list[Tensor]]:
        """The outputs of :meth:`forward` from per level ``(cls, box)`` maps ``(N, C, Hi, Wi)`` at the
        towers' ends (level ``i`` uses ``scales[i]``); a generator runs each level's towers just
        before its predictors, as a loop over the levels would."""
        cls_logits, bbox_reg, centerness = [], [], []
        for level, (cls_feature, box_feature) in enumerate(tower_maps):
            cls_logits.append(self.cls_logits(cls_feature))
            bbox_reg.append(F.relu(self.scales[level](self.bbox_pred(box_feature))))
            centerness.append(self.centerness(box_feature))
        return {"cls_logits": cls_logits, "bbox_reg": bbox_reg, "centerness": centerness}

    # Cutting the head (CrossKD runs one head's towers to a conv and another's from there) --------

    def towers(self) -> tuple[nn.Sequential, nn.Sequential]:
        """The classification and box towers."""
        return self.cls_tower, self.bbox_tower

    def predict_from(self, features: list[tuple[Tensor, Tensor]], start: int) -> dict[str, list[Tensor]]:
        """See :meth:`TwoTowerHead.predict_from` (level ``i`` uses ``scales[i]``)."""
        self.check_num_levels(len(features))
        return self.predict_levels(self.finish_towers(cls, box, start) for cls, box in features)
