"""Stopping a run on SIGTERM or SIGINT with a checkpoint of the current iteration.

``kill``, a scheduler's pre-emption (SLURM sends SIGTERM) and Ctrl+C (SIGINT) only raise a flag
while training runs (:class:`StopSignals`). At the end of the iteration the ranks of a DDP run
agree on it (:func:`agreed_stop_signal`, one all-reduce), and
:class:`msadkit.engine.train.checkpointing.IterationCheckpoint` writes that iteration's checkpoints
(``iter_step=N.ckpt`` and ``last.ckpt``, atomically, as the periodic ones) and raises
:class:`TrainingInterrupted`. ``msadkit train`` then prints the command that resumes and exits with
128 + the signal number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process the signal
ended. A second signal stops at once, without a checkpoint.

Lightning's own SIGTERM handler is replaced while training runs: it ends the fit without a
checkpoint and with exit status 0, and it forwards the signal and broadcasts from inside the
handler. SIGUSR1, the signal of Lightning's SLURM auto-requeue, stays Lightning's. Data-loader
workers ignore both signals (:func:`shield_loader_workers`): a process group's signal reaches them
too, and a worker that died of it would end the run with an error instead of a checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading
from functools import partial
from typing import Any, Callable

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from msadkit.errors import MsadkitError

__all__ = [
    "TrainingInterrupted",
    "StopSignals",
    "agreed_stop_signal",
    "signal_name",
    "shield_loader_workers",
    "IgnoreStopSignals",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, ``SIGINT`` for 2."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class TrainingInterrupted(MsadkitError):
    """A signal stopped training after the checkpoint of ``iteration`` was written to ``checkpoint``.

    Attributes:
        signum: the signal (SIGTERM or SIGINT).
        iteration: the iteration the checkpoint holds.
        checkpoint: the resumable checkpoint (``checkpoints/last.ckpt``).
        is_global_zero: whether this is the process that reports it (rank 0).
        exit_status: 128 + ``signum``, the status a shell gives a process that signal ended.
    """

    def __init__(self, signum: int, iteration: int, max_iter: int, checkpoint: str, is_global_zero: bool) -> None:
        super().__init__(
            f"stopped by {signal_name(signum)} at iteration {iteration} of {max_iter}; checkpoint saved to {checkpoint}"
        )
        self.signum = signum
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.is_global_zero = is_global_zero
        self.exit_status = 128 + signum


class StopSignals:
    """SIGTERM and SIGINT handlers that only note the first signal (:attr:`received`).

    SIGINT is taken over only from Python's default handler (the one that raises
    ``KeyboardInterrupt``): a handler someone else installed (the notebooks' live view, which
    stops on Kernel > Interrupt itself) keeps deciding what an interrupt does. Handlers can only be
    set in the main thread; elsewhere nothing is installed and signals act as before.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def install(self) -> None:
        """Take over the signals' handlers (call :meth:`restore` to give them back)."""
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return
        self._pid = os.getpid()
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if signum == signal.SIGINT and current is not signal.default_int_handler:
                continue
            self._previous[signum] = current
            signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            # A data-loader worker forked while the handler was set (a process group's Ctrl+C or
            # SIGTERM reaches it too): the training process stops it when it stops.
            return
        if self.received is None:
            self.received = signum
            return
        # A second signal: stop now, without a checkpoint, the way the signal normally does.
        self.restore()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def agreed_stop_signal(trainer: L.Trainer, local: int | None) -> int | None:
    """The stop signal any rank received (the highest number if several), or None; every rank
    gets the same answer, so all of them stop after the same iteration.

    A collective in a DDP run: every rank calls it once per iteration.
    """
    if trainer.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return local
    # NCCL reduces tensors on the GPU only: the strategy's device is the one every rank can use.
    flag = torch.tensor([local or 0], dtype=torch.int32, device=trainer.strategy.root_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


class IgnoreStopSignals:
    """A data loader's ``worker_init_fn``: the worker ignores SIGTERM and SIGINT, then runs ``init_fn``.

    The training process stops its workers itself when it stops; they also end when it dies.
    (PyTorch's workers otherwise die of a SIGTERM that does not come from their parent, and the
    training process then fails with "DataLoader worker ... is killed by signal".)
    """

    def __init__(self, init_fn: Callable[[int], None] | None) -> None:
        self.init_fn = init_fn

    def __call__(self, worker_id: int) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.init_fn is not None:
            self.init_fn(worker_id)


def shield_loader_workers(loader: Any, rank: int) -> None:
    """Make the workers of ``loader`` (a :class:`DataLoader` with workers) ignore the stop signals.

    Lightning gives a loader without a ``worker_init_fn`` its worker seeding
    (``seed_everything(workers=True)``) and leaves one that has an init function as it is; the
    wrapper runs that same seeding, so the workers' generators stay what they were.
    """
    if not isinstance(loader, DataLoader) or loader.num_workers == 0:
        return
    if isinstance(loader.worker_init_fn, IgnoreStopSignals):
        return
    init_fn = loader.worker_init_fn
    if init_fn is None and int(os.environ.get("PL_SEED_WORKERS", 0)):
        init_fn = partial(pl_worker_init_function, rank=rank)
    loader.worker_init_fn = IgnoreStopSignals(init_fn)
