"""One training process per run folder: a writability check and an exclusive lock on the folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import TracebackType

from msadkit.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLock", "check_writable_folder"]

LOCK_NAME = ".msadkit.lock"
"""The lock file in the run folder; it exists while a process trains into the folder."""


def check_writable_folder(path: str | os.PathLike, key: str = "output_dir") -> Path:
    """``path`` if it is (or can be created as) a folder this process may write into.

    Only looks, creates nothing. Raises :class:`ConfigError` naming ``key`` and the path when the
    path is a file, lies under a file, or lies in a folder that is not writable.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{key} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{key} {path} is not writable")
        return path
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{key} {path} cannot be created: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path} cannot be created: folder {ancestor} is not writable")
    return path


def _make_folders(path: Path, key: str) -> list[Path]:
    """Create ``path`` and its missing parents; the folders created, outermost first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise ConfigError(f"{key} {path} cannot be created: {folder} is a file, not a folder") from None
            continue  # another process made it meanwhile: not ours to remove
        except OSError as exc:
            raise ConfigError(f"{key} {path} cannot be created: {exc.strerror} ({folder})") from None
        created.append(folder)
    return created


class RunLock:
    """An exclusive lock on a run folder, held by the one process that trains into it.

    :meth:`acquire` creates the folder if needed and takes a ``flock`` on ``LOCK_NAME`` inside it,
    writing the holder's pid and host into the file. A second process is refused at once with a
    :class:`ConfigError` naming the folder and the holder. The kernel drops a ``flock`` when its
    process dies, so a lock file left by a killed process does not block the next run.
    :meth:`release` removes the lock file and the folders :meth:`acquire` created, if they are
    empty then (a run refused before writing anything leaves nothing behind).

    Usable as a context manager. On systems without ``fcntl`` the folder is created, not locked.
    """

    def __init__(self, run_dir: str | os.PathLike, key: str = "output_dir") -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.key = key
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self) -> RunLock:
        check_writable_folder(self.run_dir, self.key)
        self._created = _make_folders(self.run_dir, self.key)
        if fcntl is None:
            return self
        try:
            self._fd = self._lock()
        except BaseException:
            self._remove_created_folders()
            raise
        holder = f"{os.getpid()} {socket.gethostname()}\n".encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, holder, 0)
        return self

    def _lock(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise ConfigError(f"{self.key} {self.run_dir} is not writable: {exc.strerror} ({self.path})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 256, 0).decode(errors="replace").split()
                os.close(fd)
                pid, host = (holder + ["unknown", "unknown"])[:2]
                raise ConfigError(
                    f"{self.key} {self.run_dir} is in use by another training process (pid {pid} on host {host}, "
                    f"lock file {self.path}); wait for it to end or choose another {self.key}"
                ) from None
            # The holder we waited on may have removed the file on release; a lock on the removed
            # file would not exclude a process that opens the new one, so lock the file at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file, unlock, and remove the folders created by :meth:`acquire` if empty."""
        if self._fd is not None:
            # Unlink before unlocking: a process that opened the file meanwhile sees it gone.
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None
        self._remove_created_folders()

    def _remove_created_folders(self) -> None:
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:  # not empty: the run wrote into it
                break
        self._created = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
