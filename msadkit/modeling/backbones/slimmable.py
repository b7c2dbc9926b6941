"""Slimmable ResNet-50 at one width, loadable from the official multi-width checkpoint.

The slimmable network of Yu et al. stores every convolution at full width and one BatchNorm per
width; the network at width ``w`` uses the leading channels of each convolution and the BN of
``w``. MSAD trains at a single width, so here the network is built directly at that width with
ordinary convolutions and norms: no unused BN branches remain, and DDP needs no
``find_unused_parameters``.

Channels at width ``w`` (``w`` in :data:`WIDTHS`): stem ``int(64 w)``; outputs of res2..res5
``int(f * 4 * w)`` for ``f`` in (64, 128, 256, 512); bottleneck middle channels ``out // 4``;
[3, 4, 6, 3] blocks; stride 2 on the 3x3 conv of the first block of res3..res5; projection
shortcut (1x1 conv + norm) when the stride is not 1 or the channel count changes.

Official checkpoint keys (after an optional leading ``module.``) and where they go, with ``k`` the
block index counted over all stages from 1 (res2: 1-3, res3: 4-7, res4: 8-13, res5: 14-16), ``b``
the block index inside its stage, ``i = WIDTHS.index(w)`` and ``t`` one of ``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``:

=====================================  ===========================================
official key                           msadkit key
=====================================  ===========================================
``features.0.0.weight``                ``stem.conv.weight`` (sliced)
``features.0.1.bn.<i>.<t>``            ``stem.norm.<t>``
``features.<k>.body.0.weight``         ``res<s>.<b>.conv1.weight`` (sliced)
``features.<k>.body.1.bn.<i>.<t>``     ``res<s>.<b>.norm1.<t>``
``features.<k>.body.3.weight``         ``res<s>.<b>.conv2.weight`` (sliced)
``features.<k>.body.4.bn.<i>.<t>``     ``res<s>.<b>.norm2.<t>``
``features.<k>.body.6.weight``         ``res<s>.<b>.conv3.weight`` (sliced)
``features.<k>.body.7.bn.<i>.<t>``     ``res<s>.<b>.norm3.<t>``
``features.<k>.shortcut.0.weight``     ``res<s>.<b>.shortcut.conv.weight`` (sliced)
``features.<k>.shortcut.1.bn.<i>.<t>`` ``res<s>.<b>.shortcut.norm.<t>``
``features.*.bn.<j>.*`` with j != i    not used (the BNs of the other widths)
``classifier.*``                       ignored (the ImageNet classifier)
=====================================  ===========================================

"Sliced" means ``weight[:out_c, :in_c]``. A :class:`FrozenBatchNorm2d` has no
``num_batches_tracked``, so that counter is read and dropped for frozen norms.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
from torch import nn

from msadkit.errors import CheckpointError, ConfigError
from msadkit.modeling.backbones.resnet import RESNET_STRIDES, freeze_stages
from msadkit.modeling.backbones.weight_sources import is_torchvision_weights
from msadkit.modeling.image_batch import check_image_batch
from msadkit.modeling.norm import FrozenBatchNorm2d, get_norm
from msadkit.utils.checkpoint import format_keys, key_problems, load_checkpoint_file, load_state_dict_strict

__all__ = [
    "WIDTHS",
    "official_module_pairs",
    "BLOCKS_PER_STAGE",
    "slimmable_channels",
    "SlimmableBottleneck",
    "SlimmableResNet50",
    "slimmable_resnet50",
    "load_slimmable_checkpoint",
]

WIDTHS = (0.25, 0.5, 0.75, 1.0)
BLOCKS_PER_STAGE = (3, 4, 6, 3)

_STAGE_NAMES = ("res2", "res3", "res4", "res5")
_STAGE_BASE_CHANNELS = (64, 128, 256, 512)
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_NORMS = ("BN", "SyncBN", "FrozenBN", "GN")


def _check_width(width: float) -> None:
    if isinstance(width, bool) or width not in WIDTHS:
        raise ValueError(f"slimmable ResNet-50: width must be one of {WIDTHS}, got {width!r}")


def slimmable_channels(width: float) -> dict[str, int]:
    """Output channels of the stem and of res2..res5 at ``width``.

    Example: width 0.25 gives ``{"stem": 16, "res2": 64, "res3": 128, "res4": 256, "res5": 512}``.
    """
    _check_width(width)
    channels = {"stem": int(64 * width)}
    for name, base in zip(_STAGE_NAMES, _STAGE_BASE_CHANNELS):
        channels[name] = int(base * 4 * width)
    return channels


class SlimmableBottleneck(nn.Module):
    """ResNet bottleneck: 1x1 -> 3x3 (carries the stride) -> 1x1, plus identity or projection.

    Args:
        in_channels: input channels ``C_in``.
        out_channels: output channels ``C_out``; the middle convs have ``C_out // 4``.
        stride: 1 or 2, applied by the 3x3 conv and by the projection.
        norm: norm layer name for :func:`msadkit.modeling.norm.get_norm`.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, norm: str) -> None:
        super().__init__()
        mid = out_channels // 4
        self.conv1 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.norm1 = get_norm(norm, mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.norm2 = get_norm(norm, mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 1, bias=False)
        self.norm3 = get_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    norm=get_norm(norm, out_channels),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W)`` -> ``(N, C_out, H / stride, W / stride)``."""
        identity = x if self.shortcut is None else self.shortcut(x)
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return self.relu(y + identity)


class SlimmableResNet50(nn.Module):
    """ResNet-50 body at one slimmable width.

    Attributes:
        width: the width multiplier, one of :data:`WIDTHS`.
        norm: the norm layer name it was built with.
        out_channels: ``{"res2": int(256 w), "res3": int(512 w), "res4": int(1024 w), "res5": int(2048 w)}``.
        strides: ``{"res2": 4, "res3": 8, "res4": 16, "res5": 32}``.

    Args:
        width: one of :data:`WIDTHS`.
        norm: "BN", "SyncBN", "FrozenBN" or "GN".
    """

    STAGES = (("stem",), ("res2",), ("res3",), ("res4",), ("res5",))

    def __init__(self, width: float, *, norm: str = "BN") -> None:
        super().__init__()
        channels = slimmable_channels(width)
        if norm not in _NORMS:
            raise ValueError(f"slimmable ResNet-50: norm must be one of {_NORMS}, got {norm!r}")
        self.width = width
        self.norm = norm
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, channels["stem"], 7, stride=2, padding=3, bias=False),
                norm=get_norm(norm, channels["stem"]),
                relu=nn.ReLU(inplace=True),
                pool=nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        in_channels = channels["stem"]
        for stage_index, (name, num_blocks) in enumerate(zip(_STAGE_NAMES, BLOCKS_PER_STAGE)):
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if block_index == 0 and stage_index > 0 else 1
                blocks.append(SlimmableBottleneck(in_channels, channels[name], stride=stride, norm=norm))
                in_channels = channels[name]
            self.add_module(name, nn.Sequential(*blocks))
        self.out_channels = {name: channels[name] for name in _STAGE_NAMES}
        self.strides = dict(RESNET_STRIDES)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the body.

        Args:
            images: ``(N, 3, H, W)`` normalised batch.

        Returns:
            ``{"res2": (N, out_channels["res2"], H/4, W/4), ..., "res5": (..., H/32, W/32)}``
            (sizes rounded up).
        """
        check_image_batch(images, "SlimmableResNet50")
        x = self.stem(images)
        features = {}
        for name in _STAGE_NAMES:
            x = getattr(self, name)(x)
            features[name] = x
        return features


def slimmable_resnet50(width: float, *, norm: str = "BN", freeze_at: int = 0) -> SlimmableResNet50:
    """Build a slimmable ResNet-50 at ``width``.

    Args:
        width: one of :data:`WIDTHS` (0.25, 0.5, 0.75, 1.0).
        norm: "BN" (default), "SyncBN", "FrozenBN" or "GN".
        freeze_at: 0 trains everything (MSAD's setting), 1 freezes the stem, 2 the stem and res2,
            ... 5 all; frozen BN layers become FrozenBN.

    Raises:
        ValueError: ``width``, ``norm`` or ``freeze_at`` is not allowed.
    """
    model = SlimmableResNet50(width, norm=norm)
    freeze_stages(model, SlimmableResNet50.STAGES, freeze_at)
    return model


def official_module_pairs(model: SlimmableResNet50) -> list[tuple[str, str, bool]]:
    """``(msadkit module name, official module name, is_conv)`` for every conv and norm of ``model``."""
    pairs = [("stem.conv", "features.0.0", True), ("stem.norm", "features.0.1", False)]
    official_index = 1
    for name in _STAGE_NAMES:
        for block_index, block in enumerate(getattr(model, name)):
            ours, theirs = f"{name}.{block_index}", f"features.{official_index}"
            pairs += [
                (f"{ours}.conv1", f"{theirs}.body.0", True),
                (f"{ours}.norm1", f"{theirs}.body.1", False),
                (f"{ours}.conv2", f"{theirs}.body.3", True),
                (f"{ours}.norm2", f"{theirs}.body.4", False),
                (f"{ours}.conv3", f"{theirs}.body.6", True),
                (f"{ours}.norm3", f"{theirs}.body.7", False),
            ]
            if block.shortcut is not None:
                pairs += [
                    (f"{ours}.shortcut.conv", f"{theirs}.shortcut.0", True),
                    (f"{ours}.shortcut.norm", f"{theirs}.shortcut.1", False),
                ]
            official_index += 1
    return pairs


def load_slimmable_checkpoint(model: SlimmableResNet50, path: str | os.PathLike, width: float) -> None:
    """Fill ``model`` from the official multi-width checkpoint at ``width``.

    The file (``s_resnet50_0.25_0.5_0.75_1.0.pt``) is a dict whose ``"model"`` entry holds the
    state dict described in the module docstring. Convolutions take the leading channels of the
    stored full-width weights; norms take the BN of ``width``. The classifier keys are ignored.
    After loading, ``model.eval()`` computes what the official network computes at ``width``.

    Args:
        model: a :class:`SlimmableResNet50` built at ``width`` with norm "BN", "SyncBN" or "FrozenBN".
        path: the checkpoint file.
        width: the width to load; must equal ``model.width``.

    Raises:
        ValueError: ``width`` is not in :data:`WIDTHS` or differs from ``model.width``.
        CheckpointError: the file is missing or unreadable, has no ``"model"`` state dict, the
            model uses GroupNorm (the checkpoint holds BN statistics), a model tensor is left
            unfilled, a checkpoint key (other than ``classifier.*``) maps to nothing, or a stored
            tensor is too small or of the wrong shape. The message names the file and the keys.
    """
    if is_torchvision_weights(path):
        raise ConfigError(
            f"model.backbone.weights={path}: torchvision's ResNet weights are single-width; slimmable_resnet50 "
            "loads the multi-width s_resnet50_0.25_0.5_0.75_1.0.pt (docs/pretrained_weights.md says where it comes "
            "from), or use model.backbone.name=resnet50 with torchvision weights"
        )
    _check_width(width)
    if width != model.width:
        raise ValueError(f"load_slimmable_checkpoint: width {width} differs from the model's width {model.width}")
    data = load_checkpoint_file(path)
    state = data.get("model")
    if not isinstance(state, dict):
        found = "no 'model' key" if state is None else f"'model' is a {type(state).__name__}"
        raise CheckpointError(f"checkpoint file {path} is not a slimmable checkpoint: {found} (expected a state dict)")
    if any(isinstance(m, nn.GroupNorm) for m in model.modules()):
        raise CheckpointError(
            f"checkpoint {path} holds BatchNorm statistics and cannot fill a GroupNorm model; "
            "build the model with norm 'BN', 'SyncBN' or 'FrozenBN'"
        )
    stored: dict[str, torch.Tensor] = {}
    not_tensors = []
    for key, value in state.items():
        short = key[len("module."):] if key.startswith("module.") else key
        if short.startswith("classifier."):
            continue
        if not isinstance(value, torch.Tensor):
            not_tensors.append(key)
        stored[short] = value
    if not_tensors:
        raise CheckpointError(f"checkpoint file {path}: the values of {format_keys(not_tensors)} are not tensors")
    prefix = "module." if any(k.startswith("module.") for k in state) else ""

    own = model.state_dict()
    width_index = WIDTHS.index(width)
    known: set[str] = set()  # official keys that have a meaning for a model of this layout
    covered: set[str] = set()  # our keys the table accounts for, filled or reported
    filled: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    unexpected: list[str] = []
    misfit: list[str] = []
    for ours, theirs, is_conv in official_module_pairs(model):
        if is_conv:
            tensor_pairs = [(f"{ours}.weight", f"{theirs}.weight")]
        else:
            known.update(f"{theirs}.bn.{index}.{t}" for index in range(len(WIDTHS)) for t in _BN_TENSORS)
            tensor_pairs = [(f"{ours}.{t}", f"{theirs}.bn.{width_index}.{t}") for t in _BN_TENSORS]
        for our_key, their_key in tensor_pairs:
            known.add(their_key)
            if our_key not in own:
                # A FrozenBatchNorm2d has no num_batches_tracked: the counter is read and dropped.
                if their_key in stored and not isinstance(model.get_submodule(ours), FrozenBatchNorm2d):
                    unexpected.append(f"{prefix}{their_key} (the model has no {our_key})")
                continue
            covered.add(our_key)
            if their_key not in stored:
                missing.append(f"{prefix}{their_key} (for {our_key})")
                continue
            value, need = stored[their_key], own[our_key].shape
            if is_conv:
                fits = value.dim() == 4 and value.shape[2:] == need[2:] and all(
                    value.shape[d] >= need[d] for d in (0, 1)
                )
            else:
                fits = value.shape == need
            if not fits:
                expect = f"at least {tuple(need)}" if is_conv else f"{tuple(need)}"
                misfit.append(f"{prefix}{their_key} (stored {tuple(value.shape)}, needs {expect})")
                continue
            filled[our_key] = value[: need[0], : need[1]].clone() if is_conv else value.clone()
    unexpected += [f"{prefix}{k}" for k in stored if k not in known]
    missing += [f"{k} (no checkpoint key maps to it)" for k in own if k not in covered]

    problems = key_problems(missing, unexpected, misfit)
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit the slimmable ResNet-50 at width {width}: " + "; ".join(problems)
        )
    load_state_dict_strict(model, filled, source=str(path))
