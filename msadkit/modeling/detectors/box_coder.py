"""Box <-> delta encoding of anchor-based detectors (R-CNN parametrisation).

For an anchor with centre ``(xa, ya)``, width ``wa`` and height ``ha`` and a box with centre
``(x, y)`` and size ``(w, h)`` (width = ``x2 - x1``, no ``+1``)::

    dx = wx * (x - xa) / wa        dy = wy * (y - ya) / ha
    dw = ww * log(w / wa)          dh = wh * log(h / ha)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["BoxCoder", "DEFAULT_SCALE_CLAMP"]

# Largest log-scale a decoded box may take: a 16-pixel anchor grows to at most 1000 pixels.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _centres_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


class BoxCoder:
    """Encode boxes as ``(dx, dy, dw, dh)`` deltas relative to anchors and decode them back.

    Both directions compute in float32 and return float32, so bf16 head outputs decode to exact
    pixel coordinates.

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers of the deltas; RetinaNet uses ``(1, 1, 1, 1)``.
        scale_clamp: upper bound applied to ``dw / ww`` and ``dh / wh`` before ``exp`` in
            :meth:`decode`, so a wild prediction cannot overflow.
    """

    def __init__(
        self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = DEFAULT_SCALE_CLAMP
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder: weights must have 4 values (wx, wy, ww, wh), got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas that turn ``anchors`` into ``boxes``.

        Args:
            boxes: ``(..., 4)`` xyxy target boxes with positive width and height.
            anchors: ``(..., 4)`` xyxy anchors, broadcastable to ``boxes``.

        Returns:
            ``(..., 4)`` float32 deltas ``(dx, dy, dw, dh)``.
        """
        wx, wy, ww, wh = self.weights
        ax, ay, aw, ah = _centres_and_sizes(anchors.float())
        bx, by, bw, bh = _centres_and_sizes(boxes.float())
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes obtained by applying ``deltas`` to ``anchors``.

        Args:
            deltas: ``(..., 4)`` predicted ``(dx, dy, dw, dh)``.
            anchors: ``(..., 4)`` xyxy anchors, broadcastable to ``deltas``.

        Returns:
            ``(..., 4)`` float32 xyxy boxes.
        """
        wx, wy, ww, wh = self.weights
        deltas = deltas.float()
        ax, ay, aw, ah = _centres_and_sizes(anchors.float())
        dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        cx, cy = ax + dx * aw, ay + dy * ah
        half_w, half_h = 0.5 * aw * torch.exp(dw), 0.5 * ah * torch.exp(dh)
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"
