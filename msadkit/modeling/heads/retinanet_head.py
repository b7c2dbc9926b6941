"""The RetinaNet head: classification and box subnets shared across levels (docs/methods.md §2.3)."""

from __future__ import annotations

from torch import Tensor, nn

from msadkit.modeling.heads.tower import TwoTowerHead, conv_tower, init_dense_head

__all__ = ["RetinaNetHead"]


class RetinaNetHead(TwoTowerHead):
    """Two towers of ``num_convs`` 3x3 convs (+ optional norm) and ReLU, then a 3x3 predictor each.

    The same weights run on every level. All convs start from a normal distribution with std 0.01
    and zero bias; the classifier bias is ``-log((1 - prior_prob) / prior_prob)`` so every anchor
    starts with foreground probability ``prior_prob`` and the focal loss of the many easy
    negatives does not swamp the first iterations.

    Output channels are anchor-major: channel ``a * K + k`` holds class ``k`` of anchor ``a``
    (``a * 4 + j`` for delta ``j``), which :func:`~msadkit.modeling.detectors.dense_detector.permute_to_nhwk`
    turns into ``(N, Hi*Wi*A, K)``.

    Args:
        in_channels: channels of every input level.
        num_classes: number of foreground classes K.
        num_anchors: anchors per location A.
        num_convs: convs per tower.
        norm: norm layer name for :func:`msadkit.modeling.norm.get_norm` ("" for none, "GN", ...).
            A norm layer is shared across levels like the convs.
        prior_prob: initial foreground probability of the classifier.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_anchors: int = 9,
        num_convs: int = 4,
        norm: str = "",
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"RetinaNetHead: prior_prob must be in (0, 1), got {prior_prob}")
        if num_classes < 1 or num_anchors < 1 or in_channels < 1 or num_convs < 0:
            raise ValueError(
                "RetinaNetHead: in_channels, num_classes and num_anchors must be positive and num_convs "
                f"non-negative, got {in_channels}, {num_classes}, {num_anchors}, {num_convs}"
            )
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_subnet = conv_tower(in_channels, num_convs, norm)
        self.bbox_subnet = conv_tower(in_channels, num_convs, norm)
        self.cls_score = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)

        init_dense_head(self, self.cls_score, prior_prob)


    def forward(self, levels: list[Tensor]) -> dict[str, list[Tensor]]:
        """Raw predictions of every level.

        Args:
            levels: per level ``(N, C, Hi, Wi)`` feature maps.

        Returns:
            ``{"cls_logits": [(N, A*K, Hi, Wi)], "bbox_deltas": [(N, A*4, Hi, Wi)]}``.
        """
        cls_logits = [self.cls_score(self.cls_subnet(x)) for x in levels]
        bbox_deltas = [self.bbox_pred(self.bbox_subnet(x)) for x in levels]
        return {"cls_logits": cls_logits, "bbox_deltas": bbox_deltas}

    # Cutting the head (CrossKD runs one head's towers to a conv and another's from there) --------

    def towers(self) -> tuple[nn.Sequential, nn.Sequential]:
        """The classification and box subnets."""
        return self.cls_subnet, self.bbox_subnet

    def predict_from(self, features: list[tuple[Tensor, Tensor]], start: int) -> dict[str, list[Tensor]]:
        """See :meth:`TwoTowerHead.predict_from`."""
        cls_logits, bbox_deltas = [], []
        for cls_feature, box_feature in features:
            cls_feature, box_feature = self.finish_towers(cls_feature, box_feature, start)
            cls_logits.append(self.cls_score(cls_feature))
            bbox_deltas.append(self.bbox_pred(box_feature))
        return {"cls_logits": cls_logits, "bbox_deltas": bbox_deltas}
