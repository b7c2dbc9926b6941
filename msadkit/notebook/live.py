"""What a notebook shows while it trains: progress, live loss (and validation AP) curves, a clean stop.

In a live Jupyter session a progress bar (iterations done/total, rate, time left, current loss)
sits above a curve that is redrawn in place; Kernel > Interrupt stops training after the current
iteration with a checkpoint and one line saying how to resume. In a batch run (papermill) the same
callback prints one plain line per report, which papermill logs live.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import lightning as L

from msadkit.analysis.plots import plot_loss_curves
from msadkit.engine.train.metrics_logger import PeriodicMetrics
from msadkit.errors import MsadkitError
from msadkit.utils.run_folder import last_checkpoint

__all__ = ["LiveLossCurves", "TrainingStopped", "read_history"]

METRICS_FILE = "metrics.jsonl"
# Lightning's device banner and notices: in a live session they would fill the output area in red.
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")
# Seconds between two progress-bar updates (every iteration would flood the front end).
_PROGRESS_INTERVAL_S = 0.25

logger = logging.getLogger(__name__)


class TrainingStopped(MsadkitError):
    """Training was stopped on request after an iteration; the run folder holds a checkpoint to
    resume from (running the cell again resumes)."""

    def _render_traceback_(self) -> list[str]:
        # IPython prints these lines instead of a traceback: a requested stop is not a crash.
        return [str(self)]


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's ``metrics.jsonl`` (loss rows and validation rows), skipping a
    line cut short by a kill; empty when there is no file."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("iter"), int):
            records.append(record)
    return records


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class LiveLossCurves(PeriodicMetrics):
    """Reports training every ``period`` iterations while a notebook trains.

    Interactively: a progress widget (updated every iteration, at most four times a second) and
    the loss-curve figure, redrawn in place at each report from the run folder's whole
    ``metrics.jsonl`` (so a resumed run shows its earlier points, and validation AP rows add an AP
    panel). In a batch run: one text line per report.

    Args:
        period: iterations between reports (use ``trainer.log_period``).
        interactive: widgets and a redrawn figure instead of printed lines.
        title: figure title.

    Attributes:
        history: the records drawn last (metrics.jsonl rows, validation rows included).
        redraws: how many times the figure was drawn.
        stop_requested: set by an interrupt while training; the run stops after this iteration.
    """

    def __init__(self, *, period: int, interactive: bool, title: str = "training losses") -> None:
        super().__init__(period)
        self.interactive = interactive
        self.title = title
        self.history: list[dict[str, Any]] = []
        self.redraws = 0
        self.stop_requested = False
        self._fitting = False
        self._handle: Any = None
        self._bar: Any = None
        self._label: Any = None
        self._first_step = 0
        self._last_update = 0.0
        self._loss = math.nan

    # Session: quiet Lightning, interrupt = stop ---------------------------------------------------

    @contextlib.contextmanager
    def attended(self) -> Iterator[None]:
        """Around a training call in a live session: Lightning's banner, notices and warnings stay
        out of the output area (warnings go to this module's logger), and an interrupt (SIGINT,
        Kernel > Interrupt) asks for a stop after the current iteration instead of Lightning's
        ``SystemExit``. A second interrupt, or one outside the training loop, interrupts as usual."""
        levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
        previous_handler = None
        in_main_thread = threading.current_thread() is threading.main_thread()
        if in_main_thread:
            previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            for name in levels:
                logging.getLogger(name).setLevel(logging.ERROR)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                try:
                    yield
                finally:
                    for warning in caught:
                        logger.info("training warning: %s", warning.message)
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            if in_main_thread:
                signal.signal(signal.SIGINT, previous_handler)

    def _on_interrupt(self, signum: int, frame: Any) -> None:
        if not self._fitting or self.stop_requested:
            raise KeyboardInterrupt
        # Only a flag: a widget update from inside a signal handler could interleave with a
        # message the kernel is sending; the next iteration end shows and acts on it.
        self.stop_requested = True

    # Lightning hooks -------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._fitting = True
        self._first_step = trainer.global_step
        # Resuming: the records kept up to the checkpoint are drawn at once.
        self.history = read_history(trainer.default_root_dir)
        if not self.interactive:
            return
        import ipywidgets as widgets
        from IPython.display import display

        self._bar = widgets.IntProgress(value=trainer.global_step, min=0, max=max(1, trainer.max_steps),
                                        description="training", bar_style="info")
        self._label = widgets.HTML()
        self._show_progress(trainer)
        display(widgets.HBox([self._bar, self._label]))
        if self.history:
            self._redraw()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self._loss = float(loss)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._bar is not None:
            now = time.perf_counter()
            if now - self._last_update >= _PROGRESS_INTERVAL_S or trainer.global_step >= trainer.max_steps:
                self._last_update = now
                self._show_progress(trainer)
        if self.stop_requested and trainer.global_step < trainer.max_steps:
            self._stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting = False
        if self._bar is not None:
            self._show_progress(trainer, done=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._fitting = False

    def report(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        if self.interactive:
            # The run folder's records: earlier (resumed) iterations and validation rows included.
            self.history = read_history(trainer.default_root_dir) or [*self.history, record]
            self._redraw()
            return
        self.history.append(record)
        terms = "  ".join(
            f"{k} {v:.4f}"
            for k, v in record.items()
            if k not in ("iter", "loss", "time", "lr") and isinstance(v, float) and math.isfinite(v)
        )
        loss = record.get("loss", math.nan)
        loss = loss if isinstance(loss, float) else math.nan
        print(f"iter {record['iter']}/{trainer.max_steps}  loss {loss:.4f}  {terms}", flush=True)

    # Drawing ---------------------------------------------------------------------------------------

    def _stop(self, trainer: L.Trainer) -> None:
        run_dir = Path(trainer.default_root_dir)
        checkpoint = last_checkpoint(run_dir)
        trainer.save_checkpoint(checkpoint)
        self._fitting = False
        if self._bar is not None:
            self._show_progress(trainer, stopped=True)
        raise TrainingStopped(
            f"Training stopped at iteration {trainer.global_step} of {trainer.max_steps}; checkpoint saved to "
            f"{checkpoint}. Run this cell again (or Run All) to resume from it."
        )

    def _show_progress(self, trainer: L.Trainer, *, done: bool = False, stopped: bool = False) -> None:
        step, total = trainer.global_step, max(1, trainer.max_steps)
        elapsed = time.perf_counter() - self._start
        rate = (step - self._first_step) / elapsed if elapsed > 0 and step > self._first_step else math.nan
        left = (total - step) / rate if rate and math.isfinite(rate) and rate > 0 else math.nan
        self._bar.value = min(step, total)
        parts = [f"{step}/{total} it ({100 * step // total} %)", f"{rate:.2f} it/s" if math.isfinite(rate) else "- it/s"]
        if step >= total or done:
            self._bar.bar_style = "success"
            parts.append(f"done in {_duration(elapsed)}")
        elif stopped:
            self._bar.bar_style = "warning"
            parts.append("stopped")
        else:
            parts.append(f"{_duration(left)} left")
        if math.isfinite(self._loss):
            parts.append(f"loss {self._loss:.4f}")
        text = " &middot; ".join(parts)
        if not (done or stopped or step >= total):
            text += " &nbsp;<i>(Kernel &gt; Interrupt stops after the current iteration)</i>"
        self._label.value = text

    def _redraw(self) -> None:
        from IPython.display import Image, display

        figure = plot_loss_curves({"this run": self.history}, title=self.title)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight", facecolor="white")
        image = Image(data=buffer.getvalue(), format="png")
        self.redraws += 1
        # One display that is replaced in place, not a new image per report.
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)
