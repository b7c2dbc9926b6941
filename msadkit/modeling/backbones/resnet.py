"""torchvision ResNet-50/101 as a detection backbone returning ``"res2".."res5"``.

The wrapper keeps torchvision's module names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``), so a
torchvision state dict loads into it key for key once the classifier (``fc.*``) is dropped; the
average pool and ``fc`` are not built, which leaves no unused parameters for DDP.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torchvision
from torch import nn

from msadkit.errors import CheckpointError
from msadkit.modeling.backbones.weight_sources import resolve_weights_file
from msadkit.modeling.image_batch import check_image_batch
from msadkit.modeling.norm import FrozenBatchNorm2d, freeze_batchnorm, get_norm
from msadkit.utils.checkpoint import load_checkpoint_file, load_state_dict_strict

__all__ = [
    "RESNET_STRIDES",
    "TorchvisionResNet",
    "torchvision_resnet",
    "load_torchvision_weights",
    "freeze_stages",
]

RESNET_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

_DEPTHS = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
_NORMS = ("BN", "SyncBN", "FrozenBN", "GN")


def freeze_stages(model: nn.Module, stages: Sequence[Sequence[str]], freeze_at: int) -> None:
    """Freeze the first ``freeze_at`` stages of ``model``.

    A frozen stage gets ``requires_grad=False`` on every parameter and its BatchNorm layers become
    :class:`FrozenBatchNorm2d`; otherwise BN statistics would keep drifting in training although
    the affine no longer learns.

    Args:
        model: the backbone.
        stages: attribute names of each stage's modules in order, stem first
            (e.g. ``[["conv1", "bn1"], ["layer1"], ...]``).
        freeze_at: 0 freezes nothing, 1 the stem, 2 the stem and res2, ... up to ``len(stages)``.

    Raises:
        ValueError: ``freeze_at`` is out of range.
    """
    if isinstance(freeze_at, bool) or not isinstance(freeze_at, int) or not 0 <= freeze_at <= len(stages):
        raise ValueError(f"freeze_at must be an integer in [0, {len(stages)}], got {freeze_at!r}")
    for names in stages[:freeze_at]:
        for name in names:
            frozen = freeze_batchnorm(getattr(model, name))
            for parameter in frozen.parameters():
                parameter.requires_grad_(False)
            setattr(model, name, frozen)


class TorchvisionResNet(nn.Module):
    """The convolutional body of a torchvision ResNet, returning the four stage outputs.

    Attributes:
        depth: 50 or 101.
        out_channels: channels per output, ``{"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}``.
        strides: input pixels per output cell, ``{"res2": 4, ..., "res5": 32}``.

    Args:
        depth: 50 or 101.
        norm: "BN", "SyncBN", "FrozenBN" or "GN" (see :mod:`msadkit.modeling.norm`).
    """

    STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))

    def __init__(self, depth: int = 50, *, norm: str = "FrozenBN") -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"torchvision_resnet: depth must be one of {sorted(_DEPTHS)}, got {depth!r}")
        if norm not in _NORMS:
            raise ValueError(f"torchvision_resnet: norm must be one of {_NORMS}, got {norm!r}")
        # FrozenBN is obtained by freezing ordinary BN layers, which keeps torchvision's init.
        build_norm = "BN" if norm == "FrozenBN" else norm
        full = _DEPTHS[depth](weights=None, norm_layer=lambda channels: get_norm(build_norm, channels))
        self.depth = depth
        self.norm = norm
        self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, full.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = full.layer1, full.layer2, full.layer3, full.layer4
        if norm == "FrozenBN":
            freeze_batchnorm(self)
        self.out_channels = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
        self.strides = dict(RESNET_STRIDES)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the body.

        Args:
            images: ``(N, 3, H, W)`` normalised batch.

        Returns:
            ``{"res2": (N, 256, H/4, W/4), ..., "res5": (N, 2048, H/32, W/32)}`` (sizes rounded up).
        """
        check_image_batch(images, "TorchvisionResNet")
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        res2 = self.layer1(x)
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": res5}


def load_torchvision_weights(model: TorchvisionResNet, path: str | os.PathLike) -> None:
    """Load a torchvision-format ResNet state dict (e.g. ``resnet50-0676ba61.pth``) strictly.

    The ``fc.*`` classifier keys such files carry are expected and ignored, and so are the
    ``num_batches_tracked`` counters of layers that are :class:`FrozenBatchNorm2d` in ``model``
    (a frozen layer has no counter). Every other key must match a parameter or buffer of
    ``model`` in name and shape, and every parameter and buffer must be filled.

    Raises:
        CheckpointError: the file is missing, unreadable, not a flat state dict, or does not fit;
            the message names the file and lists the offending keys.
    """
    data = load_checkpoint_file(path)
    bad = sorted(str(k) for k, v in data.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(
            f"checkpoint file {path} is not a torchvision ResNet state dict: the values of keys "
            f"{', '.join(bad[:10])} are not tensors"
        )
    frozen_prefixes = {
        f"{name}." for name, module in model.named_modules() if isinstance(module, FrozenBatchNorm2d)
    }
    state: dict[str, torch.Tensor] = {}
    for key, tensor in data.items():
        if key.startswith("fc."):
            continue
        if key.endswith(".num_batches_tracked") and key[: -len("num_batches_tracked")] in frozen_prefixes:
            continue
        state[key] = tensor
    load_state_dict_strict(model, state, source=str(path))


def torchvision_resnet(
    depth: int,
    *,
    weights_path: str | os.PathLike | None = None,
    norm: str = "FrozenBN",
    freeze_at: int = 0,
) -> TorchvisionResNet:
    """Build a torchvision ResNet-50/101 backbone (downloading only weights named ``torchvision://``).

    Args:
        depth: 50 or 101.
        weights_path: optional torchvision-format state dict, loaded with
            :func:`load_torchvision_weights`: a file, or ``torchvision://ResNet50_Weights.IMAGENET1K_V1``
            (any torchvision ResNet weight enum member), fetched into torch's hub cache on first use.
        norm: "FrozenBN" (default; BN layers frozen with the loaded statistics), "BN", "SyncBN"
            or "GN".
        freeze_at: 0 trains everything, 1 freezes the stem, 2 the stem and res2, ... 5 all.

    Returns:
        A :class:`TorchvisionResNet` mapping ``(N, 3, H, W)`` to ``"res2".."res5"``.
    """
    model = TorchvisionResNet(depth, norm=norm)
    # Freezing first rejects a bad freeze_at before the file is read; loading fills frozen layers too.
    freeze_stages(model, TorchvisionResNet.STAGES, freeze_at)
    if weights_path is not None:
        load_torchvision_weights(model, resolve_weights_file(weights_path, depth=depth))
    return model
