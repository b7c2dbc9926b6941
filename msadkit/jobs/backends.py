"""Where a job's command runs: a local process (the default) or a SLURM job through submitit.

A backend starts one command with its output appended to a log file and returns a handle the
runner polls; the runner alone decides what to start, when, and what the exit code means.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from msadkit.errors import MsadkitError

__all__ = [
    "MissingExtraError",
    "RunningCommand",
    "Backend",
    "LocalProcessBackend",
    "SubmititBackend",
    "import_submitit",
    "run_logged_command",
]

# Seconds a cancelled local process gets to end on SIGTERM before it is killed.
_TERMINATE_GRACE_S = 10.0


class MissingExtraError(MsadkitError):
    """An optional package a feature needs is not installed; the message names the extra."""


class RunningCommand(Protocol):
    """A started command."""

    failure: str | None
    """Why the backend itself failed (the command never ran, or its job was lost); None otherwise."""

    def poll(self) -> int | None:
        """The exit code once the command has ended, else None."""

    def cancel(self) -> None:
        """Stop the command (the runner was interrupted)."""


class Backend(Protocol):
    """Starts commands."""

    def start(self, command: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> RunningCommand:
        """Start ``command`` with ``env`` added to the environment, output appended to ``log_path``."""


def _write_log_header(log, command: Sequence[str]) -> None:
    # Every attempt appends to the same log; the command line says where one attempt begins.
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()


def run_logged_command(command: Sequence[str], env: Mapping[str, str], log_path: str) -> int:
    """Run ``command`` to its end with ``env`` added, output appended to ``log_path``; its exit code.

    Module-level so that submitit pickles it by reference and runs it on the worker.
    """
    with open(log_path, "a", encoding="utf-8") as log:
        _write_log_header(log, command)
        return subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}).returncode


class _LocalProcess:
    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.failure: str | None = None

    def poll(self) -> int | None:
        return self.process.poll()

    def cancel(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM first: Lightning saves nothing half-written on it
        try:
            self.process.wait(timeout=_TERMINATE_GRACE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class LocalProcessBackend:
    """Each command in a child process of this one (``subprocess.Popen``)."""

    def start(self, command: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> RunningCommand:
        with open(log_path, "a", encoding="utf-8") as log:  # the child keeps its own copy of the handle
            _write_log_header(log, command)
            process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        return _LocalProcess(process)


def import_submitit() -> Any:
    """The ``submitit`` module.

    Raises:
        MissingExtraError: it is not installed; the message names the extra that installs it.
    """
    try:
        import submitit
    except ImportError:
        raise MissingExtraError(
            "running jobs through SLURM needs the optional package submitit; install it with "
            "`pip install msadkit[slurm]` (or `pip install submitit`), or use the local process backend"
        ) from None
    return submitit


class _SubmititJob:
    def __init__(self, job: Any) -> None:
        self.job = job
        self.failure: str | None = None

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as exc:  # the job was cancelled, timed out or lost its node
            self.failure = f"submitit job {self.job.job_id} ended without an exit code: {str(exc).strip()[-500:]}"
            return -1

    def cancel(self) -> None:
        self.job.cancel(check=False)


class SubmititBackend:
    """Each command as a submitit job: on SLURM (``cluster="slurm"``) or in a local submitit process
    (``cluster="local"``, the same code path without a cluster, for tests and laptops).

    The command runs on the worker with the submitting machine's interpreter path and working
    folder, so both must be visible there (a shared file system, as SLURM clusters have).

    Args:
        folder: where submitit keeps its submission files and its own logs.
        cluster: ``"slurm"``, ``"local"`` or ``"debug"`` (in this process), see ``submitit.AutoExecutor``.
        parameters: executor settings (``timeout_min``, ``slurm_partition``, ``cpus_per_task``,
            ``gpus_per_node``, ...), passed to ``update_parameters``.

    Raises:
        MissingExtraError: submitit is not installed (extra ``msadkit[slurm]``).
    """

    def __init__(self, folder: str | os.PathLike, *, cluster: str = "slurm", **parameters: Any) -> None:
        submitit = import_submitit()
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        if parameters:
            self.executor.update_parameters(**parameters)

    def start(self, command: Sequence[str], *, env: Mapping[str, str], log_path: Path) -> RunningCommand:
        job = self.executor.submit(run_logged_command, list(command), dict(env), str(log_path))
        return _SubmititJob(job)
