"""Atomic checkpoint writing and strict state-dict loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from msadkit.errors import CheckpointError
from msadkit.utils.atomic import atomic_write

__all__ = [
    "save_atomic",
    "load_checkpoint_file",
    "load_state_dict_strict",
    "key_problems",
    "format_keys",
    "checkpoint_step",
]


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Save ``obj`` with :func:`torch.save` so that ``path`` is either the old file or the new one.

    The data go to a temporary file in the same folder first and are then moved over ``path`` with
    :func:`os.replace`, which is atomic on POSIX and Windows; an interrupted save leaves no
    half-written checkpoint behind.

    Raises:
        DiskFullError: the file does not fit on its disk (one line naming it and the free space).
    """
    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def load_checkpoint_file(path: str | os.PathLike) -> dict:
    """Read a checkpoint file into a dict on the CPU, with a clear error if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"checkpoint file {path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint file {path} holds a {type(data).__name__}, expected a dict")
    return data


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The ``global_step`` of a complete Lightning checkpoint; None when the file cannot be read.

    The file is memory-mapped, so checking even a large checkpoint reads little of it; a file that
    an interrupted writer cut short (an incomplete zip archive) fails to open.
    """
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:
            # Files in torch's legacy (non-zip) format cannot be memory-mapped.
            data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # torch raises many types for unreadable files
        return None
    step = data.get("global_step") if isinstance(data, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def format_keys(keys: list[str], limit: int = 10) -> str:
    """The first ``limit`` keys, comma-separated, then ``and N more``.

    A checkpoint of another architecture misses hundreds of keys; the error stays a few lines long
    and the count still says how far apart the two are.
    """
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def key_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """Human-readable lists of missing, unexpected and misshapen keys (empty when all fit)."""
    problems = []
    if missing:
        problems.append(f"missing keys: {format_keys(sorted(missing))}")
    if unexpected:
        problems.append(f"unexpected keys: {format_keys(sorted(unexpected))}")
    if mismatched:
        problems.append(f"shape mismatch: {format_keys(sorted(mismatched))}")
    return problems


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model``; any missing, unexpected or misshapen key is an error.

    Args:
        model: the module to fill.
        state_dict: parameter and buffer tensors by name.
        source: where the weights come from (a file path), named in the error message.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})"
        for k in set(own) & set(state_dict)
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    problems = key_problems(missing, unexpected, mismatched)
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
