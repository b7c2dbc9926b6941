"""Normalization layers by name, and a BatchNorm whose statistics and affine are frozen.

Names understood by :func:`get_norm`:

- ``"BN"``: :class:`torch.nn.BatchNorm2d`.
- ``"SyncBN"``: :class:`torch.nn.SyncBatchNorm` (statistics over all processes under DDP; it
  behaves as plain BN when no process group is running).
- ``"FrozenBN"``: :class:`FrozenBatchNorm2d`, fixed affine and statistics, no parameters.
- ``"GN"``: :class:`torch.nn.GroupNorm` with 32 groups, or the largest divisor of the channel
  count below 32 that leaves at least 2 channels per group (e.g. 8 groups for a 16-channel stem at
  width 0.25, 16 for a 32-channel FPN). A group of one channel would normalise a 1x1 map (P7 of a
  small image at batch 1) over a single value: torch refuses it, and it erases the feature.
- ``""``: no normalization (:class:`torch.nn.Identity`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NORM_NAMES", "FrozenBatchNorm2d", "get_norm", "group_norm_groups", "freeze_batchnorm"]

NORM_NAMES = ("BN", "SyncBN", "FrozenBN", "GN", "")

_GN_GROUPS = 32


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d in evaluation mode with every tensor stored as a buffer.

    Computes ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel, in
    training and evaluation alike. Nothing is learned and nothing is updated, so a frozen stage
    holds no parameters (the optimizer and DDP never see it) and batch size does not matter.

    Its state-dict keys are those of ``nn.BatchNorm2d`` without ``num_batches_tracked``.

    Args:
        num_features: channel count ``C``.
        eps: added to the variance, as in ``nn.BatchNorm2d``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` of shape ``(N, C, H, W)`` with the stored statistics."""
        # F.batch_norm with training=False is exactly what an nn.BatchNorm2d computes in eval mode,
        # so a frozen copy of a BN layer reproduces it bit for bit.
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, training=False, eps=self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "FrozenBatchNorm2d":
        """A frozen copy of ``bn`` (``BatchNorm2d`` or ``SyncBatchNorm``) with the same affine and stats."""
        frozen = cls(bn.num_features, eps=bn.eps)
        source = bn.running_mean if bn.running_mean is not None else bn.weight
        if source is not None:
            frozen = frozen.to(source.device)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight.detach())
                frozen.bias.copy_(bn.bias.detach())
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen


def group_norm_groups(channels: int, preferred: int = _GN_GROUPS) -> int:
    """The largest group count ``<= preferred`` that divides ``channels`` into groups of >= 2."""
    for groups in range(min(preferred, channels // 2), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def get_norm(name: str, channels: int) -> nn.Module:
    """Build the normalization layer called ``name`` for ``channels`` channels.

    Args:
        name: one of :data:`NORM_NAMES` (see the module docstring).
        channels: channel count ``C`` of the ``(N, C, H, W)`` input.

    Raises:
        ValueError: ``name`` is not a known norm, or ``channels`` is not positive.
    """
    if channels < 1:
        raise ValueError(f"get_norm: channels must be positive, got {channels}")
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name == "GN":
        return nn.GroupNorm(group_norm_groups(channels), channels)
    if name == "":
        return nn.Identity()
    raise ValueError(f"get_norm: unknown norm {name!r}; expected one of {', '.join(map(repr, NORM_NAMES))}")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` / ``SyncBatchNorm`` inside ``module`` by a :class:`FrozenBatchNorm2d`.

    The replacement carries the same affine parameters and running statistics. Returns ``module``
    itself, or a new ``FrozenBatchNorm2d`` when ``module`` is a BN layer.
    """
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        return FrozenBatchNorm2d.from_batchnorm(module)
    for name, child in module.named_children():
        new_child = freeze_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
