"""Build backbones and detectors from the ``model`` section of a config."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from msadkit.errors import ConfigError
from msadkit.modeling.fcos import FCOS
from msadkit.modeling.fcos_head import FCOSHead
from msadkit.modeling.fpn import FPN, BackboneWithFPN
from msadkit.modeling.resnet import torchvision_resnet
from msadkit.modeling.slimmable import WIDTHS, load_slimmable_checkpoint, slimmable_resnet50

__all__ = ["BACKBONES", "ARCHITECTURES", "build_bottom_up", "build_backbone", "build_fcos", "build_retinanet", "build_model", "register_architecture", "resolution_levels"]

BACKBONES = ("slimmable_resnet50", "resnet50", "resnet101")
HIGH_RES_FEATURES = ("p3", "p4", "p5", "p6", "p7")
# A low-resolution detector sees the 0.5x image and uses p2..p6, which are aligned with the
# high-resolution p3..p7 and assigned with their strides and ground truth (docs/methods.md §1.2).
LOW_RES_FEATURES = ("p2", "p3", "p4", "p5", "p6")
HIGH_RES_STRIDES = (8, 16, 32, 64, 128)


def resolution_levels(model_cfg: dict[str, Any]) -> tuple[tuple[str, ...], int]:
    """FPN levels and input downsampling factor for ``model.resolution`` (high or low)."""
    resolution = model_cfg["resolution"]
    if resolution == "high":
        return HIGH_RES_FEATURES, 1
    if resolution == "low":
        return LOW_RES_FEATURES, 2
    raise ConfigError(f"model.resolution must be 'high' or 'low', got {resolution!r}")

# Architectures beyond the plain detectors register their builders here (MSAD, distillers).
# A builder is called as ``builder(config, for_inference=...)``; with ``for_inference=True`` a
# distiller returns only its deployable student (no teacher is loaded).
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str) -> Callable:
    """Decorator that makes ``builder(config, *, for_inference) -> nn.Module`` available as ``model.arch: name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ARCHITECTURES[name] = builder
        return builder

    return wrap


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
    return FCOSHead(
        in_channels=model_cfg["fpn"]["out_channels"],
        num_classes=model_cfg["num_classes"],
        num_levels=len(HIGH_RES_STRIDES),
        num_convs=fcos_cfg["num_convs"],
        norm=fcos_cfg["norm"],
        prior_prob=fcos_cfg["prior_prob"],
    )


def fcos_kwargs(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """Assignment, loss and inference arguments of :class:`FCOS` from the config."""
    fcos_cfg = model_cfg["fcos"]
    return dict(
        num_classes=model_cfg["num_classes"],
        center_sampling_radius=fcos_cfg["center_sampling_radius"],
        focal_alpha=fcos_cfg["focal_alpha"],
        focal_gamma=fcos_cfg["focal_gamma"],
        score_thresh=fcos_cfg["score_thresh"],
        topk_candidates=fcos_cfg["topk_candidates"],
        nms_thresh=fcos_cfg["nms_thresh"],
        detections_per_image=fcos_cfg["detections_per_image"],
    )


def build_fcos(model_cfg: dict[str, Any]) -> FCOS:
    """FCOS at ``model.resolution`` with the high-resolution strides (8..128)."""
    in_features, downsample = resolution_levels(model_cfg)
    return FCOS(
        backbone=build_backbone(model_cfg, in_features),
        head=build_fcos_head(model_cfg),
        in_features=in_features,
        strides=HIGH_RES_STRIDES,
        input_downsample=downsample,
        **fcos_kwargs(model_cfg),
    )


def build_retinanet(model_cfg: dict[str, Any]) -> nn.Module:
    from msadkit.modeling.anchors import AnchorGenerator, retinanet_anchor_sizes
    from msadkit.modeling.retinanet import RetinaNet
    from msadkit.modeling.retinanet_head import RetinaNetHead

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
        focal_alpha=r_cfg["focal_alpha"],
        focal_gamma=r_cfg["focal_gamma"],
        smooth_l1_beta=r_cfg["smooth_l1_beta"],
        score_thresh=r_cfg["score_thresh"],
        topk_candidates=r_cfg["topk_candidates"],
        nms_thresh=r_cfg["nms_thresh"],
        detections_per_image=r_cfg["detections_per_image"],
    )


def build_model(config: dict[str, Any], *, for_inference: bool = False) -> nn.Module:
    """The model named by ``model.arch``: ``fcos``, ``retinanet`` or a registered architecture.

    Args:
        config: resolved config.
        for_inference: build only what evaluation needs (a distiller's student, no teacher).
    """
    import msadkit.modeling.msad_teacher  # noqa: F401  (registers msad_teacher)

    model_cfg = config["model"]
    arch = model_cfg["arch"]
    if arch == "fcos":
        model = build_fcos(model_cfg)
    elif arch == "retinanet":
        model = build_retinanet(model_cfg)
    elif arch in ARCHITECTURES:
        model = ARCHITECTURES[arch](config, for_inference=for_inference)
    else:
        known = ("fcos", "retinanet", *sorted(ARCHITECTURES))
        raise ConfigError(f"model.arch must be one of {known}, got {arch!r}")
    if config["distill"]["teacher"] and not for_inference:
        from msadkit.modeling.distillation.build import build_distiller

        return build_distiller(config, student=model)
    return model
