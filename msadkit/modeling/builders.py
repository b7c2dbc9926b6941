"""Builders of backbones and detectors from a resolved config.

Each detector builder takes the whole config and returns an ``nn.Module``;
:mod:`msadkit.modeling.registry` maps ``model.arch`` names to them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msadkit.errors import ConfigError
from msadkit.modeling.backbones.fpn import FPN, BackboneWithFPN
from msadkit.modeling.backbones.resnet import torchvision_resnet
from msadkit.modeling.backbones.slimmable import WIDTHS, load_slimmable_checkpoint, slimmable_resnet50
from msadkit.modeling.detectors.anchors import AnchorGenerator, retinanet_anchor_sizes
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.detectors.fusion import CrossingFeatureFusion
from msadkit.modeling.detectors.msad_teacher import EVAL_BRANCHES, SIZE_DIVISIBILITY, MSADTeacher
from msadkit.modeling.detectors.retinanet import RetinaNet
from msadkit.modeling.heads.fcos_head import FCOSHead
from msadkit.modeling.heads.retinanet_head import RetinaNetHead
from msadkit.modeling.levels import HIGH_RES_FEATURES, HIGH_RES_STRIDES, LOW_RES_FEATURES, resolution_levels

__all__ = [
    "BACKBONES",
    "build_bottom_up",
    "build_backbone",
    "build_fcos_head",
    "fcos_kwargs",
    "build_fcos",
    "build_retinanet",
    "build_msad_teacher",
]

BACKBONES = ("slimmable_resnet50", "resnet50", "resnet101")


def build_bottom_up(backbone_cfg: dict[str, Any]) -> nn.Module:
    """The ResNet bottom-up network (``res2..res5``), with its ImageNet weights if configured."""
    name = backbone_cfg["name"]
    weights = backbone_cfg.get("weights")
    if name == "slimmable_resnet50":
        width = backbone_cfg["width"]
        if width not in WIDTHS:
            raise ConfigError(f"model.backbone.width must be one of {WIDTHS} for slimmable_resnet50, got {width}")
        model = slimmable_resnet50(width, norm=backbone_cfg["norm"], freeze_at=backbone_cfg["freeze_at"])
        if weights:
            load_slimmable_checkpoint(model, weights, width)
        return model
    if name in ("resnet50", "resnet101"):
        return torchvision_resnet(
            int(name[len("resnet"):]),
            weights_path=weights,
            norm=backbone_cfg["norm"],
            freeze_at=backbone_cfg["freeze_at"],
        )
    raise ConfigError(f"model.backbone.name must be one of {BACKBONES}, got {name!r}")


def build_backbone(model_cfg: dict[str, Any], out_features: tuple[str, ...]) -> BackboneWithFPN:
    """Bottom-up network plus FPN returning ``out_features``."""
    bottom_up = build_bottom_up(model_cfg["backbone"])
    fpn_cfg = model_cfg["fpn"]
    fpn = FPN(
        bottom_up.out_channels,
        out_channels=fpn_cfg["out_channels"],
        top_block=fpn_cfg["top_block"],
        norm=fpn_cfg["norm"],
        out_features=out_features,
    )
    return BackboneWithFPN(bottom_up, fpn)


def build_fcos_head(model_cfg: dict[str, Any]) -> FCOSHead:
    fcos_cfg = model_cfg["fcos"]
    if fcos_cfg["tower_conv_bias"] not in (None, True, False):
        raise ConfigError(
            f"model.fcos.tower_conv_bias must be null, true or false, got {fcos_cfg['tower_conv_bias']!r}"
        )
    return FCOSHead(
        in_channels=model_cfg["fpn"]["out_channels"],
        num_classes=model_cfg["num_classes"],
        num_levels=len(HIGH_RES_STRIDES),
        num_convs=fcos_cfg["num_convs"],
        norm=fcos_cfg["norm"],
        prior_prob=fcos_cfg["prior_prob"],
        tower_conv_bias=fcos_cfg["tower_conv_bias"],
    )


# Loss and inference arguments every dense detector takes, read from its config section.
_DENSE_DETECTOR_KEYS = (
    "focal_alpha",
    "focal_gamma",
    "score_thresh",
    "topk_candidates",
    "nms_thresh",
    "detections_per_image",
)


def _dense_detector_kwargs(section: dict[str, Any]) -> dict[str, Any]:
    return {key: section[key] for key in _DENSE_DETECTOR_KEYS}


def fcos_kwargs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Assignment, loss and inference arguments of :class:`FCOS` from the config."""
    fcos_cfg = model_cfg["fcos"]
    return dict(
        num_classes=model_cfg["num_classes"],
        center_sampling_radius=fcos_cfg["center_sampling_radius"],
        giou_smoothing=fcos_cfg["giou_smoothing"],
        clip_before_nms=fcos_cfg["clip_before_nms"],
        **_dense_detector_kwargs(fcos_cfg),
    )


def build_fcos(config: dict[str, Any]) -> FCOS:
    """FCOS at ``model.resolution`` with the high-resolution strides (8..128)."""
    model_cfg = config["model"]
    in_features, downsample = resolution_levels(model_cfg)
    return FCOS(
        backbone=build_backbone(model_cfg, in_features),
        head=build_fcos_head(model_cfg),
        in_features=in_features,
        strides=HIGH_RES_STRIDES,
        input_downsample=downsample,
        **fcos_kwargs(model_cfg),
    )


def build_retinanet(config: dict[str, Any]) -> RetinaNet:
    """RetinaNet at ``model.resolution`` with the high-resolution strides (8..128)."""
    model_cfg = config["model"]
    r_cfg = model_cfg["retinanet"]
    in_features, downsample = resolution_levels(model_cfg)
    anchor_generator = AnchorGenerator(
        sizes=retinanet_anchor_sizes(tuple(r_cfg["anchor_base_sizes"])),
        aspect_ratios=tuple(r_cfg["aspect_ratios"]),
        strides=HIGH_RES_STRIDES,
    )
    head = RetinaNetHead(
        in_channels=model_cfg["fpn"]["out_channels"],
        num_classes=model_cfg["num_classes"],
        num_anchors=anchor_generator.num_anchors_per_location,
        num_convs=r_cfg["num_convs"],
        norm=r_cfg["norm"],
        prior_prob=r_cfg["prior_prob"],
    )
    return RetinaNet(
        backbone=build_backbone(model_cfg, in_features),
        head=head,
        num_classes=model_cfg["num_classes"],
        in_features=in_features,
        strides=HIGH_RES_STRIDES,
        input_downsample=downsample,
        anchor_generator=anchor_generator,
        iou_thresholds=tuple(r_cfg["iou_thresholds"]),
        smooth_l1_beta=r_cfg["smooth_l1_beta"],
        **_dense_detector_kwargs(r_cfg),
    )


def build_msad_teacher(config: dict[str, Any]) -> MSADTeacher:
    """The MSAD teacher from a config (``model.backbone``, ``model.fpn``, ``model.fcos``, ``model.msad``).

    Raises:
        ConfigError: ``model.resolution`` is not ``high``, ``data.size_divisibility`` is not a
            multiple of 256, or ``model.msad.eval_branch`` is unknown.
    """
    model_cfg = config["model"]
    msad_cfg = model_cfg["msad"]
    if model_cfg["resolution"] != "high":
        raise ConfigError(
            f"model.resolution must be 'high' for model.arch=msad_teacher (it builds its own "
            f"low-resolution branch), got {model_cfg['resolution']!r}"
        )
    divisibility = config["data"]["size_divisibility"]
    if divisibility % SIZE_DIVISIBILITY:
        raise ConfigError(
            f"model.arch=msad_teacher needs data.size_divisibility={SIZE_DIVISIBILITY} (or a multiple) so "
            f"that its two pyramids align, got {divisibility}"
        )
    if msad_cfg["eval_branch"] not in EVAL_BRANCHES:
        raise ConfigError(f"model.msad.eval_branch must be one of {EVAL_BRANCHES}, got {msad_cfg['eval_branch']!r}")
    all_levels = tuple(sorted(set(HIGH_RES_FEATURES) | set(LOW_RES_FEATURES)))
    detector = FCOS(
        backbone=build_backbone(model_cfg, all_levels),
        head=build_fcos_head(model_cfg),
        in_features=HIGH_RES_FEATURES,
        strides=HIGH_RES_STRIDES,
        **fcos_kwargs(model_cfg),
    )
    fusion = CrossingFeatureFusion(model_cfg["fpn"]["out_channels"], reduction=msad_cfg["fusion_reduction"])
    return MSADTeacher(
        detector=detector,
        fusion=fusion,
        low_features=LOW_RES_FEATURES,
        fused_loss_weight=msad_cfg["fused_loss_weight"],
        eval_branch=msad_cfg["eval_branch"],
    )
