"""Export a finished run as one deployable file: ONNX or TorchScript (``msadkit export``).

The exported graph is :class:`~msadkit.engine.inference.deploy.DeployableDetector`: input one RGB image
``(1, 3, H, W)`` float32 in 0..255 with free ``H`` and ``W``; outputs ``boxes (D, 4)`` xyxy in
input pixels, ``scores (D,)`` and ``labels (D,)`` (contiguous class indices). Both formats come
from one trace (``torch.jit.trace``; ONNX through the TorchScript-based exporter, opset 17, with
``torchvision::nms`` as ``NonMaxSuppression``), so sizes computed from the input shape stay
symbolic. The image passes only the batch-size-1 path: there is no batched export.

Loading the TorchScript file needs ``import torchvision`` first (its NMS operator); the ONNX file
runs in onnxruntime alone.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from msadkit.engine.inference.deploy import DeployableDetector
from msadkit.errors import ConfigError, InputError
from msadkit.utils.atomic import atomic_write

__all__ = ["EXPORT_FORMATS", "ONNX_OPSET", "example_image", "trace_deployable", "export_model"]

EXPORT_FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17


def example_image(config: dict[str, Any]) -> torch.Tensor:
    """The image traced through: ``(1, 3, h, w)`` with a non-square size that needs resizing and
    padding, so no branch of the preprocessing is folded away as a no-op."""
    side = int(config["data"]["test_short_side"])
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, side + 7, side + side // 2 + 3, generator=generator) * 255.0


def check_writable(out: str | os.PathLike, argument: str = "--out") -> Path:
    """``out`` as a path whose folder exists (created if needed) and is writable.

    Raises:
        InputError: the folder cannot be created or written, or ``out`` is a folder.
    """
    path = Path(out).expanduser()
    if path.is_dir():
        raise InputError(f"{argument} {out}: is a folder; give the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{argument} {out}: cannot create folder {path.parent}: {exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise InputError(f"{argument} {out}: folder {path.parent} is not writable")
    return path


def trace_deployable(deployable: DeployableDetector, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of the deployable detector on ``example``."""
    with warnings.catch_warnings():
        # The tracer warns about every Python number it records; the ones that matter (sizes) are
        # computed from the input shape with tensor operations and stay symbolic.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            return torch.jit.trace(deployable, (example,), check_trace=False)


def _onnx_bytes(deployable: nn.Module, example: torch.Tensor) -> bytes:
    try:
        import onnx  # noqa: F401  (the exporter needs it; a clear message beats its ImportError)
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install msadkit[export]") from None
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                deployable,
                (example,),
                buffer,
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["image"],
                output_names=["boxes", "scores", "labels"],
                dynamic_axes={
                    "image": {2: "height", 3: "width"},
                    "boxes": {0: "D"},
                    "scores": {0: "D"},
                    "labels": {0: "D"},
                },
            )
    return buffer.getvalue()


def export_model(model: nn.Module, config: dict[str, Any], fmt: str, out: str | os.PathLike) -> Path:
    """Write ``model`` with its test-time pre- and post-processing as one ``fmt`` file at ``out``.

    The file is written atomically: a failure leaves nothing at ``out``.

    Args:
        model: the run's detector (weights loaded), on the CPU.
        config: the run's config.
        fmt: ``"onnx"`` or ``"torchscript"``.
        out: the file to write.

    Raises:
        ConfigError: unknown format, or the onnx package is missing.
        InputError: ``out`` cannot be written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    path = check_writable(out)
    deployable = DeployableDetector(model.cpu().float(), config).eval()
    example = example_image(config)
    if fmt == "onnx":
        payload = _onnx_bytes(deployable, example)
    else:
        buffer = io.BytesIO()
        traced = trace_deployable(deployable, example)
        with warnings.catch_warnings():
            # torch 2.9+ calls TorchScript deprecated in favour of torch.export, which cannot
            # capture these detectors (docs/export.md); the format still loads and runs.
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(traced, buffer)
        payload = buffer.getvalue()
    with atomic_write(path, "wb") as handle:
        handle.write(payload)
    return path
