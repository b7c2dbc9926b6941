"""Write files so that readers see either the old content or the new one, never a partial file."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from msadkit.errors import MsadkitError

__all__ = [
    "DiskFullError",
    "disk_full_error",
    "atomic_write",
    "write_text_atomic",
    "is_temporary_name",
    "remove_stale_temporaries",
]

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


# A full disk, and a full quota (which Linux reports for a user or group limit).
_FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(MsadkitError, OSError):
    """A file could not be written because its filesystem (or the user's quota) is full.

    An :class:`OSError` too (``errno`` is ``ENOSPC``), so code that handles write errors still
    catches it; the message is one line naming the file and the space left.
    """


def _full_disk_cause(exc: BaseException) -> OSError | None:
    """The ``ENOSPC``/``EDQUOT`` error behind ``exc``, following its causes and contexts.

    ``torch.save`` reports a failed write as ``RuntimeError: [enforce fail at inline_container.cc]``
    with the ``OSError`` only as its context.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DiskFullError):
            return None
        if isinstance(current, OSError) and current.errno in _FULL_DISK_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _free_space(path: Path) -> str:
    """The space left to unprivileged writers on the filesystem of ``path`` (or of its nearest existing folder)."""
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "free space unknown"
    if free < 1024:
        return f"{free:.0f} bytes free"
    for unit in ("KiB", "MiB", "GiB"):
        free /= 1024
        if free < 1024:
            return f"{free:.1f} {unit} free"
    return f"{free / 1024:.1f} TiB free"


def disk_full_error(
    exc: BaseException, path: str | os.PathLike | None = None, *, default: str | os.PathLike | None = None
) -> DiskFullError | None:
    """A :class:`DiskFullError` when ``exc`` comes from a full disk, else None.

    It names ``path``; without one, the file the error names, else ``default`` (a run folder).
    """
    cause = _full_disk_cause(exc)
    if cause is None:
        return None
    if path is None:
        own = cause.filename if isinstance(cause.filename, (str, os.PathLike)) else None
        path = own if own is not None else default
    target = Path(path) if path is not None else Path.cwd()
    reason = cause.strerror or os.strerror(cause.errno)
    error = DiskFullError(f"cannot write {target}: {reason} ({_free_space(target)})")
    error.errno = cause.errno
    return error


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success move it over ``path`` (``os.replace``).

    An exception inside the block removes the temporary file and leaves ``path`` untouched. The file
    gets the mode a plain ``open`` would give it (``0o666`` less the umask), not ``mkstemp``'s
    private ``0o600``. A process killed inside the block leaves its temporary file behind (named
    ``.<name>.<random>.tmp``); :func:`remove_stale_temporaries` clears those.

    Raises:
        DiskFullError: the filesystem is full (also when the writer inside the block reports it
            in another exception, as ``torch.save`` does); ``path`` keeps its old content.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        full = disk_full_error(exc, path)
        if full is None:
            raise
        raise full from exc
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        # After the unlink, so the free space named is what the disk has without the partial file.
        full = disk_full_error(exc, path)
        if full is None:
            raise
        raise full from exc


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
