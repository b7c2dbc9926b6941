"""Write files so that readers see either the old content or the new one, never a partial file."""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "write_text_atomic", "is_temporary_name", "remove_stale_temporaries"]

_TEMP_SUFFIX = ".tmp"
# ``.<name>.<8 characters of tempfile's random alphabet>.tmp``: the names ``atomic_write`` creates.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _current_umask() -> int:
    """The process's umask, without changing it where the system can tell (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way to read it is to set it: for the instant between the two calls, files
    # other threads create get 0o022.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success move it over ``path`` (``os.replace``).

    An exception inside the block removes the temporary file and leaves ``path`` untouched. The file
    gets the mode a plain ``open`` would give it (``0o666`` less the umask), not ``mkstemp``'s
    private ``0o600``. A process killed inside the block leaves its temporary file behind (named
    ``.<name>.<random>.tmp``); :func:`remove_stale_temporaries` clears those.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
    return Path(path)


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is the name of a temporary file of :func:`atomic_write`."""
    return bool(_TEMP_NAME.fullmatch(name))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writers killed inside :func:`atomic_write` left in ``folder``.

    Call it only while no other process writes into ``folder`` (under the run folder's lock), since
    a live writer's temporary file looks the same. Returns the removed files; a missing folder has
    none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if is_temporary_name(entry.name) and entry.is_file() and not entry.is_symlink():
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            removed.append(entry)
    return removed
