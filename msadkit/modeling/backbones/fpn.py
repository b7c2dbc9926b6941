"""Feature pyramid network (Lin et al., 2017) with the P6/P7 levels of RetinaNet and FCOS.

``p<k>`` has stride ``2**k``. P2..P5 come from a 1x1 lateral conv on ``res<k>`` plus the nearest
upsampled coarser level, followed by a 3x3 output conv. P6 is a 3x3 stride-2 conv on C5
(``top_block="res5"``: MSAD, FCOS) or on P5 (``top_block="p5"``: torchvision RetinaNet), and P7 a
3x3 stride-2 conv on ``relu(P6)``.

Only the layers the requested ``out_features`` depend on are built, so that every parameter gets a
gradient (DDP without ``find_unused_parameters``): with ``out_features`` p3..p7 neither the p2
output conv nor the res2 lateral conv exists.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msadkit.modeling.norm import get_norm

__all__ = ["FPN", "BackboneWithFPN"]

_TOP_BLOCKS = ("res5", "p5")


def _level(name: str, prefix: str) -> int:
    if not name.startswith(prefix) or not name[len(prefix):].isdigit():
        raise ValueError(f"FPN: feature name {name!r} should look like '{prefix}<level>'")
    return int(name[len(prefix):])


def _conv(in_channels: int, out_channels: int, *, kernel_size: int, stride: int, norm: str) -> nn.Module:
    """Conv (with bias only when there is no norm) followed by the norm, initialised like detectron2."""
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=not norm
    )
    # Kaiming uniform with a=1 and zero bias ("c2_xavier_fill"), the init of the reference FPN.
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if not norm:
        return conv
    return nn.Sequential(conv, get_norm(norm, out_channels))


class FPN(nn.Module):
    """Top-down feature pyramid over backbone stages.

    Attributes:
        in_features: backbone outputs used, finest first.
        out_features: pyramid levels returned, finest first.
        out_channels: channels of every output level.
        strides: stride of every returned level, e.g. ``{"p3": 8, ..., "p7": 128}``.
        input_channels: the backbone outputs actually read, with their channel counts.
        lateral_convs / output_convs: ``nn.ModuleDict`` by level name (``"p3"``...), only the
            levels that are needed.
        p6 / p7: the extra levels' convs, or ``None`` when not requested.

    Args:
        in_channels: channels of each backbone output, e.g. ``{"res2": 256, ..., "res5": 2048}``.
        out_channels: channels ``C`` of every pyramid level.
        in_features: consecutive backbone levels ``res<k>`` used, finest first.
        top_block: source of P6: ``"res5"`` (C5) or ``"p5"`` (P5).
        norm: norm after each lateral and output conv (``""`` for none; see ``get_norm``).
        out_features: levels to return, a subset of ``p<k>`` for the input levels plus p6, p7.
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        *,
        out_channels: int = 256,
        in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        top_block: str = "res5",
        norm: str = "",
        out_features: Sequence[str] = ("p2", "p3", "p4", "p5", "p6", "p7"),
    ) -> None:
        super().__init__()
        in_features, out_features = tuple(in_features), tuple(out_features)
        if not in_features:
            raise ValueError("FPN: in_features is empty")
        absent = [name for name in in_features if name not in in_channels]
        if absent:
            raise ValueError(f"FPN: in_features {absent} have no entry in in_channels {sorted(in_channels)}")
        in_levels = [_level(name, "res") for name in in_features]
        if in_levels != list(range(in_levels[0], in_levels[0] + len(in_levels))):
            raise ValueError(f"FPN: in_features must be consecutive levels, finest first, got {in_features}")
        if top_block not in _TOP_BLOCKS:
            raise ValueError(f"FPN: top_block must be one of {_TOP_BLOCKS}, got {top_block!r}")
        out_levels = [_level(name, "p") for name in out_features]
        allowed = list(range(in_levels[0], in_levels[-1] + 1))
        wants_extra = any(level > in_levels[-1] for level in out_levels)
        if wants_extra:
            if in_levels[-1] != 5:
                raise ValueError(f"FPN: p6/p7 need res5 among in_features, got {in_features}")
            allowed += [6, 7]
        if not out_levels or out_levels != sorted(set(out_levels)) or any(lv not in allowed for lv in out_levels):
            raise ValueError(
                f"FPN: out_features must be distinct levels in increasing order from "
                f"{['p%d' % lv for lv in allowed]}, got {out_features}"
            )

        self.in_features = in_features
        self.out_features = out_features
        self.out_channels = out_channels
        self.top_block = top_block
        self.strides = {name: 2**level for name, level in zip(out_features, out_levels)}

        # Pyramid levels whose P map must be computed: the requested ones, p5 when P6 is built on
        # it, and every level between, because the top-down path runs through them.
        pyramid_levels = [lv for lv in out_levels if lv <= in_levels[-1]]
        if wants_extra and top_block == "p5":
            pyramid_levels.append(5)
        self._top_down_levels = list(range(min(pyramid_levels), in_levels[-1] + 1)) if pyramid_levels else []
        self._output_levels = sorted(set(pyramid_levels))
        self.lateral_convs = nn.ModuleDict(
            {
                f"p{lv}": _conv(in_channels[f"res{lv}"], out_channels, kernel_size=1, stride=1, norm=norm)
                for lv in self._top_down_levels
            }
        )
        self.output_convs = nn.ModuleDict(
            {f"p{lv}": _conv(out_channels, out_channels, kernel_size=3, stride=1, norm=norm) for lv in self._output_levels}
        )
        # Backbone outputs actually read, with their expected channels (checked by BackboneWithFPN).
        self.input_channels = {f"res{lv}": in_channels[f"res{lv}"] for lv in self._top_down_levels}
        if wants_extra and top_block == "res5":
            self.input_channels["res5"] = in_channels["res5"]
        self.p6: nn.Module | None = None
        self.p7: nn.Module | None = None
        if wants_extra:
            p6_in = in_channels["res5"] if top_block == "res5" else out_channels
            # The extra levels carry no norm in the reference implementations.
            self.p6 = _conv(p6_in, out_channels, kernel_size=3, stride=2, norm="")
            if 7 in out_levels:
                self.p7 = _conv(out_channels, out_channels, kernel_size=3, stride=2, norm="")

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Build the pyramid.

        Args:
            features: backbone outputs, ``"res<k>": (N, C_k, H_k, W_k)``, containing ``in_features``.

        Returns:
            ``{"p<k>": (N, out_channels, H_k, W_k)}`` for ``out_features``, finest first; P6 and P7
            have size ``ceil(H_5 / 2)`` and ``ceil(H_6 / 2)``.
        """
        pyramid: dict[int, torch.Tensor] = {}
        top_down: torch.Tensor | None = None
        for level in reversed(self._top_down_levels):
            lateral = self.lateral_convs[f"p{level}"](features[f"res{level}"])
            if top_down is not None:
                # size= (not scale_factor) so odd sizes, where 2 * H_{k+1} != H_k, line up.
                lateral = lateral + F.interpolate(top_down, size=lateral.shape[-2:], mode="nearest")
            top_down = lateral
            if level in self._output_levels:
                pyramid[level] = self.output_convs[f"p{level}"](lateral)
        if self.p6 is not None:
            source = features["res5"] if self.top_block == "res5" else pyramid[5]
            pyramid[6] = self.p6(source)
            if self.p7 is not None:
                pyramid[7] = self.p7(F.relu(pyramid[6]))
        return {name: pyramid[_level(name, "p")] for name in self.out_features}


class BackboneWithFPN(nn.Module):
    """A bottom-up backbone followed by an :class:`FPN`: images in, pyramid out.

    Attributes:
        bottom_up: the backbone (``forward(images) -> {"res2": ..., ...}``, with ``out_channels``).
        fpn: the pyramid.
        out_channels: channels of every pyramid level (an int).
        strides: stride per returned level, e.g. ``{"p3": 8, ..., "p7": 128}``.
        out_features: returned level names, finest first.

    Args:
        bottom_up: the backbone.
        fpn: an FPN whose ``in_features`` the backbone produces.
    """

    def __init__(self, bottom_up: nn.Module, fpn: FPN) -> None:
        super().__init__()
        backbone_channels = getattr(bottom_up, "out_channels", None)
        if not isinstance(backbone_channels, dict):
            raise ValueError("BackboneWithFPN: bottom_up should have an attribute out_channels (dict of int)")
        for name, channels in fpn.input_channels.items():
            if name not in backbone_channels:
                raise ValueError(f"BackboneWithFPN: the backbone does not produce {name!r}, which the FPN reads")
            if backbone_channels[name] != channels:
                raise ValueError(
                    f"BackboneWithFPN: the FPN expects {channels} channels for {name!r}, "
                    f"the backbone gives {backbone_channels[name]}"
                )
        self.bottom_up = bottom_up
        self.fpn = fpn
        self.out_channels = fpn.out_channels
        self.strides = dict(fpn.strides)
        self.out_features = fpn.out_features

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(N, 3, H, W)`` -> ``{"p<k>": (N, out_channels, ceil(H / 2**k), ceil(W / 2**k))}``."""
        return self.fpn(self.bottom_up(images))
