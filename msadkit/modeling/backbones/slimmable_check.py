"""Verify a downloaded slimmable multi-width checkpoint before a long run starts from it.

The official ``s_resnet50_0.25_0.5_0.75_1.0.pt`` holds every convolution at full width and one
BatchNorm per width (layout: :mod:`msadkit.modeling.backbones.slimmable`). A file passes when the
network at each of the four widths loads from it strictly (every tensor present, of the right
shape, no key left over but the ImageNet classifier) and every tensor is finite. No checksum is
published for the file, so the check also gives its SHA-256 for the user to record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from msadkit.errors import CheckpointError
from msadkit.modeling.backbones.slimmable import WIDTHS, load_slimmable_checkpoint, slimmable_resnet50
from msadkit.modeling.backbones.weight_sources import file_sha256
from msadkit.utils.checkpoint import format_keys, load_checkpoint_file

__all__ = ["SlimmableCheckReport", "check_slimmable_checkpoint"]


@dataclass
class SlimmableCheckReport:
    """Outcome of :func:`check_slimmable_checkpoint`.

    Attributes:
        path: the file checked.
        sha256: its SHA-256, hexadecimal.
        num_tensors: tensors in its ``"model"`` state dict.
        widths: per width in :data:`WIDTHS`, None when the network at that width loads, else the
            loader's message.
        non_finite: keys of tensors holding NaN or infinity.
    """

    path: Path
    sha256: str
    num_tensors: int
    widths: dict[float, str | None] = field(default_factory=dict)
    non_finite: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.non_finite and all(problem is None for problem in self.widths.values())


def check_slimmable_checkpoint(path: str | os.PathLike) -> SlimmableCheckReport:
    """Load the file at every width and look for non-finite tensors.

    Raises:
        CheckpointError: the file is missing, unreadable, or has no ``"model"`` state dict (there
            is nothing to check per width then).
    """
    path = Path(path)
    data = load_checkpoint_file(path)
    state = data.get("model")
    if not isinstance(state, dict):
        found = "no 'model' key" if state is None else f"'model' is a {type(state).__name__}"
        keys = format_keys([str(k) for k in data]) if data else "nothing"
        raise CheckpointError(
            f"{path} is not a slimmable checkpoint: {found} (expected {{'model': state dict}}; it holds {keys})"
        )
    report = SlimmableCheckReport(path=path, sha256=file_sha256(path), num_tensors=len(state))
    report.non_finite = sorted(
        str(key) for key, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()
    )
    for width in WIDTHS:
        # BN (not frozen) keeps num_batches_tracked, so every stored BN tensor is checked.
        model = slimmable_resnet50(width, norm="BN")
        try:
            load_slimmable_checkpoint(model, path, width)
        except CheckpointError as exc:
            report.widths[width] = str(exc)
        else:
            report.widths[width] = None
    return report
