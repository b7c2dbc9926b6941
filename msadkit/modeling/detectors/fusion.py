"""MSAD crossing feature-level fusion (C-FF).

The MSAD teacher runs one backbone on a high-resolution image and on its half-size copy. Shifting
the low-resolution pyramid by one level aligns the two: low-res ``P_l`` and high-res ``P_{l+1}``
have the same stride in input pixels and, with a size divisibility of 256, the same ``H x W``.
C-FF fuses each aligned pair with two per-image scalar weights predicted by a squeeze-and-excite
style gate, and a single C-FF module is shared by all five pairs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["CrossingFeatureFusion", "fuse_pyramids"]


class CrossingFeatureFusion(nn.Module):
    """Fuse an aligned (high-res ``P_{l+1}``, low-res ``P_l``) pair with per-image softmax weights.

    For inputs ``high`` and ``low`` of shape ``(N, C, H, W)``::

        g = global_average_pool(concat([high, low], dim=1))     # (N, 2C)
        [w_high, w_low] = softmax(W2 relu(W1 g), dim=1)          # (N, 2)
        fused = w_high * high + w_low * low                      # (N, C, H, W)

    ``W1`` maps ``2C -> 2C // reduction`` (512 -> 32 for ``C = 256``) and ``W2`` maps to 2; neither
    has a bias. Both are initialised with Kaiming-uniform, ``a=1`` (detectron2's ``c2_xavier_fill``).

    Args:
        channels: channel count ``C`` of each input map (the FPN width).
        reduction: squeeze ratio of the hidden layer; its width is ``2C // reduction`` (at least 1).
    """

    def __init__(self, channels: int = 256, *, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        self.channels = int(channels)
        self.reduction = int(reduction)
        hidden = max(1, (2 * self.channels) // self.reduction)
        self.squeeze = nn.Linear(2 * self.channels, hidden, bias=False)
        self.score = nn.Linear(hidden, 2, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform with ``a=1``, i.e. uniform in ``±sqrt(3 / fan_in)``."""
        for layer in (self.squeeze, self.score):
            nn.init.kaiming_uniform_(layer.weight, a=1)

    def fusion_weights(self, high: Tensor, low: Tensor) -> Tensor:
        """Per-image fusion weights.

        Args:
            high: high-resolution level ``P_{l+1}``, ``(N, C, H, W)``.
            low: low-resolution level ``P_l``, ``(N, C, H, W)``.

        Returns:
            ``(N, 2)`` softmax weights; column 0 weighs ``high``, column 1 weighs ``low``.
        """
        self._check_pair(high, low)
        pooled = torch.cat([high, low], dim=1).mean(dim=(2, 3))
        logits = self.score(torch.relu(self.squeeze(pooled)))
        return torch.softmax(logits, dim=1)

    def forward(
        self, high: Tensor, low: Tensor, *, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Fuse one aligned pair.

        Args:
            high: high-resolution level ``P_{l+1}``, ``(N, C, H, W)``.
            low: low-resolution level ``P_l``, same shape as ``high``.
            return_weights: also return the ``(N, 2)`` weights (column 0 high, column 1 low).

        Returns:
            The fused map ``(N, C, H, W)``, or ``(fused, weights)`` when ``return_weights``.
        """
        weights = self.fusion_weights(high, low)
        w_high = weights[:, 0].reshape(-1, 1, 1, 1).to(high.dtype)
        # w_low == 1 - w_high, so the weighted sum is a lerp; lerp is exact at both ends, which
        # keeps identical inputs bit-identical instead of off by rounding of w_high + w_low.
        fused = torch.lerp(low, high, w_high)
        if return_weights:
            return fused, weights
        return fused

    def _check_pair(self, high: Tensor, low: Tensor) -> None:
        if high.dim() != 4 or high.shape != low.shape:
            raise ValueError(
                "C-FF needs high and low maps of identical shape (N, C, H, W), got "
                f"high {tuple(high.shape)} and low {tuple(low.shape)}"
            )
        if high.shape[1] != self.channels:
            raise ValueError(
                f"C-FF was built for {self.channels} channels, got high {tuple(high.shape)} "
                f"and low {tuple(low.shape)}"
            )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, reduction={self.reduction}"


def fuse_pyramids(
    fusion: CrossingFeatureFusion,
    high_feats: Sequence[Tensor],
    low_feats: Sequence[Tensor],
    return_weights: bool = False,
) -> list[Tensor] | tuple[list[Tensor], Tensor]:
    """Apply one shared C-FF module to every aligned pair of two pyramids.

    Args:
        fusion: the shared fusion module.
        high_feats: high-resolution levels ``P3..P7``, each ``(N, C, Hi, Wi)``.
        low_feats: low-resolution levels ``P2..P6``; ``low_feats[i]`` must have the shape of
            ``high_feats[i]``.
        return_weights: also return the weights of all pairs.

    Returns:
        The fused maps ``F3..F7`` (one per pair, shapes of ``high_feats``), or ``(fused, weights)``
        with ``weights`` of shape ``(N, L, 2)`` (``L`` pairs; last axis high, low).
    """
    if len(high_feats) != len(low_feats):
        raise ValueError(
            f"high_feats has {len(high_feats)} levels but low_feats has {len(low_feats)}; "
            "they must pair up one to one"
        )
    if len(high_feats) == 0:
        raise ValueError("high_feats and low_feats are empty; at least one level pair is needed")
    fused_maps: list[Tensor] = []
    all_weights: list[Tensor] = []
    for level, (high, low) in enumerate(zip(high_feats, low_feats)):
        if high.shape != low.shape:
            raise ValueError(
                f"level pair {level}: high {tuple(high.shape)} and low {tuple(low.shape)} "
                "differ in shape; C-FF needs aligned maps (size divisibility 256 guarantees it)"
            )
        fused, weights = fusion(high, low, return_weights=True)
        fused_maps.append(fused)
        all_weights.append(weights)
    if return_weights:
        return fused_maps, torch.stack(all_weights, dim=1)
    return fused_maps
