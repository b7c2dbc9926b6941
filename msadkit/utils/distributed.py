"""Small torch.distributed helpers that are no-ops in a single process."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["world_size", "reduce_mean"]


def world_size() -> int:
    """Number of processes in the default group, 1 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of ``value`` over all processes (detached); the value itself in one process.

    Loss normalisers (the number of positive locations) are averaged this way so every process
    divides by the same number, as detectron2's FCOS does.
    """
    value = value.detach().clone().float()
    if world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / world_size()
    return value
