"""The ``--device auto|cpu|cuda`` choice of the commands that run a trained detector."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msadkit.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_CHOICES", "DEVICE_HELP", "resolve_device"]

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DEVICE_HELP = "where the detector runs: auto (a GPU when one is present, else the CPU), cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device = "auto", *, argument: str = "--device") -> torch.device:
    """The device a ``--device`` value names.

    Args:
        name: ``"auto"`` (the first GPU when CUDA sees one, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``; a :class:`torch.device` is checked the same way.
        argument: how the value is named in an error message.

    Raises:
        ConfigError: the value is none of these, or names a GPU this machine does not have.
    """
    # Imported here: the command line builds its parser from this module without loading torch.
    import torch

    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"{argument} {name!r} is not a device: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{argument} {name}: no CUDA GPU is available on this machine "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); use --device cpu or auto"
        )
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(f"{argument} {name}: this machine has {count} GPU(s), numbered 0 to {count - 1}")
    return torch.device(text)
