"""msadkit's ResNet + FPN (slimmable ResNet-50 by default) as a detectron2 ``Backbone``.

With ``MODEL.BACKBONE.NAME: build_msadkit_slimmable_fpn_backbone`` detectron2's own
meta-architectures (``RetinaNet``, ``GeneralizedRCNN``) run on the bottom-up network and FPN that
the msadkit config's ``model.backbone`` and ``model.fpn`` describe, ImageNet weights included.
Parameter names are msadkit's (``bottom_up.*``, ``fpn.*``), so the backbone of a msadkit checkpoint
loads under the ``backbone.`` prefix.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from msadkit.errors import ConfigError
from msadkit.integrations.detectron2.config import msadkit_config_from_cfg
from msadkit.modeling.backbones.fpn import BackboneWithFPN
from msadkit.modeling.builders import build_backbone

__all__ = ["MsadkitFPNBackbone", "build_msadkit_slimmable_fpn_backbone", "check_pixel_normalization"]


class MsadkitFPNBackbone(Backbone):
    """A msadkit ``BackboneWithFPN`` behind detectron2's ``Backbone`` interface.

    Args:
        backbone: the msadkit bottom-up network with FPN; its modules are registered here directly.
        size_divisibility: padded input height and width must be multiples of it.

    Attributes:
        bottom_up / fpn: the msadkit modules.
    """

    def __init__(self, backbone: BackboneWithFPN, *, size_divisibility: int = 32) -> None:
        super().__init__()
        if size_divisibility < 1:
            raise ValueError(f"MsadkitFPNBackbone: size_divisibility must be >= 1, got {size_divisibility}")
        self.bottom_up = backbone.bottom_up
        self.fpn = backbone.fpn
        self._size_divisibility = int(size_divisibility)
        self._out_features = list(backbone.out_features)
        self._out_feature_channels = {name: int(backbone.out_channels) for name in self._out_features}
        self._out_feature_strides = {name: int(backbone.strides[name]) for name in self._out_features}

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(N, 3, H, W)`` normalised RGB -> ``{"p<k>": (N, C, ceil(H / 2**k), ceil(W / 2**k))}``."""
        return self.fpn(self.bottom_up(x))

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


def check_pixel_normalization(cfg: CfgNode, config: dict[str, Any]) -> None:
    """Raise unless detectron2 normalises images the way the msadkit backbone was trained to see them.

    detectron2's meta-architectures compute ``(image - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD`` in
    ``INPUT.FORMAT`` channel order; msadkit's backbones expect ``model.pixel_format`` normalised
    with ``model.pixel_mean`` / ``model.pixel_std``.

    Raises:
        ConfigError: naming the detectron2 keys to set and their values.
    """
    mean, std = list(config["model"]["pixel_mean"]), list(config["model"]["pixel_std"])
    channel_order = str(config["model"]["pixel_format"]).upper()

    def same(a: Sequence[float], b: Sequence[float]) -> bool:
        return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b))

    if cfg.INPUT.FORMAT != channel_order or not same(cfg.MODEL.PIXEL_MEAN, mean) or not same(cfg.MODEL.PIXEL_STD, std):
        raise ConfigError(
            f"MODEL.BACKBONE.NAME=build_msadkit_slimmable_fpn_backbone expects {channel_order} images normalised like "
            f"msadkit: set INPUT.FORMAT={channel_order}, MODEL.PIXEL_MEAN={mean}, MODEL.PIXEL_STD={std} (got "
            f"{cfg.INPUT.FORMAT}, {list(cfg.MODEL.PIXEL_MEAN)}, {list(cfg.MODEL.PIXEL_STD)})"
        )


@BACKBONE_REGISTRY.register()
def build_msadkit_slimmable_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> MsadkitFPNBackbone:
    """detectron2 backbone builder: msadkit's ``model.backbone`` + ``model.fpn`` from ``cfg.MSADKIT``.

    The levels returned are ``cfg.MSADKIT.BACKBONE_OUT_FEATURES`` (p3..p7 by default, as detectron2's
    RetinaNet reads); only the FPN layers they need are built. Padding follows msadkit's
    ``data.size_divisibility``.

    Raises:
        ConfigError: an input that is not 3-channel, a normalisation the backbone was not trained
            for, or a msadkit config problem.
    """
    if input_shape.channels != 3:
        raise ConfigError(f"build_msadkit_slimmable_fpn_backbone needs 3-channel input, got {input_shape.channels}")
    config = msadkit_config_from_cfg(cfg)
    check_pixel_normalization(cfg, config)
    out_features = tuple(cfg.MSADKIT.BACKBONE_OUT_FEATURES)
    try:
        backbone = build_backbone(config["model"], out_features)
    except ValueError as exc:
        raise ConfigError(f"MSADKIT.BACKBONE_OUT_FEATURES={list(out_features)}: {exc}") from None
    return MsadkitFPNBackbone(backbone, size_divisibility=config["data"]["size_divisibility"])
