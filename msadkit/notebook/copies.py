"""Copies of the kit's notebooks in a folder of the user's, for JupyterLab after a wheel install."""

from __future__ import annotations

import os
from pathlib import Path

from msadkit.errors import ConfigError
from msadkit.notebook.runner import notebooks_dir
from msadkit.utils.atomic import atomic_write

__all__ = ["copy_notebooks"]


def copy_notebooks(destination: str | os.PathLike, *, overwrite: bool = False) -> list[Path]:
    """Copy every notebook of :func:`~msadkit.notebook.runner.notebooks_dir` into ``destination``.

    Each file is written atomically; nothing is written when a notebook there would be replaced and
    ``overwrite`` is False.

    Returns:
        The written files, in notebook order.

    Raises:
        ConfigError: ``destination`` is a file, or already holds notebooks of these names (listed)
            and ``overwrite`` is False.
    """
    destination = Path(destination).expanduser()
    if destination.exists() and not destination.is_dir():
        raise ConfigError(f"{destination} is a file; give a folder to copy the notebooks into")
    sources = sorted(notebooks_dir().glob("*.ipynb"))
    existing = [destination / source.name for source in sources if (destination / source.name).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{destination} already holds {', '.join(path.name for path in existing)}; "
            "choose another folder, or pass --force to replace them"
        )
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        with atomic_write(destination / source.name, "wb") as handle:
            handle.write(source.read_bytes())
        written.append(destination / source.name)
    return written
