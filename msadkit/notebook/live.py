"""What a notebook shows while it trains: progress, the live training figure, a clean stop.

In a live Jupyter session a progress bar (iterations done/total, rate, time left, current loss)
sits above the training figure (:func:`msadkit.analysis.training_curves.plot_training_curves`),
redrawn in place every log period, after every validation, at the end and when an interrupt stops
training; Kernel > Interrupt stops after the current iteration with a checkpoint and one line saying
how to resume. In a batch run (papermill) the same callback prints one short line per log period
(the total loss and a few terms; every term is in the run's ``metrics.jsonl``), which papermill logs
live. Either way Lightning's banners stay out of the notebook.
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

from msadkit.analysis.figure_style import SAVE_DPI
from msadkit.analysis.training_curves import CurveLayout, plot_training_curves, progress_line
from msadkit.engine.train.metrics_logger import PeriodicMetrics
from msadkit.errors import MsadkitError
from msadkit.notebook.results import read_json_object, show_png
from msadkit.utils.run_folder import last_checkpoint

__all__ = ["LiveLossCurves", "TrainingStopped", "read_history", "read_final_eval", "quiet_lightning"]

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
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


def read_final_eval(run_dir: str | Path) -> dict[str, Any] | None:
    """A run folder's ``eval.json`` (the evaluation after training), or None before there is one."""
    return read_json_object(Path(run_dir) / EVAL_FILE)


@contextlib.contextmanager
def quiet_lightning(echo: Any = print) -> Iterator[None]:
    """Lightning's banners and notices ("GPU available: ...", "`Trainer.fit` stopped: ...") stay out
    of the cell output, and each distinct Python warning raised while training becomes one line
    passed to ``echo`` (not a red block on stderr)."""
    levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    try:
        for name in levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        # The filters in force decide which warnings count (a library's deprecation notices stay
        # hidden as they are outside a notebook); those are recorded instead of printed.
        with warnings.catch_warnings(record=True) as caught:
            try:
                yield
            finally:
                for message in dict.fromkeys(str(w.message).splitlines()[0] for w in caught if str(w.message)):
                    logger.info("training warning: %s", message)
                    echo(f"training warning: {message[:200]}")
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


class LiveLossCurves(PeriodicMetrics):
    """Reports training every ``period`` iterations while a notebook trains.

    Interactively: a progress widget (updated every iteration, at most four times a second) and
    the training figure, redrawn in place from the run folder's whole ``metrics.jsonl`` (so a
    resumed run shows its earlier points) every report, after every validation, at the end of
    training and when a stop is requested. In a batch run: one short text line per report.
    :meth:`final_figure` draws the finished run (with its final AP) for the notebook to save.

    Args:
        period: iterations between reports (use ``trainer.log_period``).
        interactive: widgets and a redrawn figure instead of printed lines.
        title: figure title.
        layout: the figure's panels, x-range and distillation terms (:meth:`for_config` reads them
            from the run's config); None: worked out from the records.

    Attributes:
        history: the records drawn last (metrics.jsonl rows, validation rows included).
        redraws: how many times the figure was drawn.
        stop_requested: set by an interrupt while training; the run stops after this iteration.
    """

    def __init__(
        self, *, period: int, interactive: bool, title: str = "training", layout: CurveLayout | None = None
    ) -> None:
        super().__init__(period)
        self.interactive = interactive
        self.title = title
        self.layout = layout
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
        self._run_dir: Path | None = None
        self._final: tuple[Any, Any] | None = None

    @classmethod
    def for_config(cls, config: dict[str, Any], *, interactive: bool, title: str = "training") -> "LiveLossCurves":
        """The callback for a run of ``config``: its log period, length and distillation terms."""
        return cls(period=int(config["trainer"]["log_period"]), interactive=interactive, title=title,
                   layout=CurveLayout.from_config(config))

    @property
    def shown(self) -> bool:
        """Whether the live figure is on screen (then the notebook need not show it again)."""
        return self._handle is not None

    # Session: quiet Lightning, interrupt = stop ---------------------------------------------------

    @contextlib.contextmanager
    def attended(self) -> Iterator[None]:
        """Around a training call: Lightning's banners, notices and warnings stay out of the output
        area (:func:`quiet_lightning`), and an interrupt (SIGINT, Kernel > Interrupt) asks for a
        stop after the current iteration instead of Lightning's ``SystemExit``. A second interrupt,
        or one outside the training loop, interrupts as usual."""
        previous_handler = None
        catch = threading.current_thread() is threading.main_thread()
        if catch:
            previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            with quiet_lightning():
                yield
        finally:
            if catch:
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
        self._run_dir = Path(trainer.default_root_dir)
        # Resuming: the records kept up to the checkpoint are drawn at once.
        self.history = read_history(self._run_dir)
        if not self.interactive:
            print(f"training to iteration {trainer.max_steps}: one line every {self.period} iterations, "
                  f"every loss term in {self._run_dir / METRICS_FILE}", flush=True)
            return
        import ipywidgets as widgets
        from IPython.display import display

        self._bar = widgets.IntProgress(value=trainer.global_step, min=0, max=max(1, trainer.max_steps),
                                        description="training", bar_style="info")
        self._label = widgets.HTML()
        self._show_progress(trainer)
        display(widgets.HBox([self._bar, self._label]))
        # The figure's panels are there from the start (and keep their size as they fill).
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

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        # The validation callback appended its row to metrics.jsonl in on_validation_epoch_end.
        self.history = read_history(trainer.default_root_dir) or self.history
        if self.interactive:
            self._redraw()
            return
        rows = [r for r in self.history if "val/AP" in r]
        if rows:
            row = rows[-1]
            print(f"iter {row['iter']}/{trainer.max_steps}  validation AP {_number(row.get('val/AP'))}  "
                  f"AP50 {_number(row.get('val/AP50'))}", flush=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting = False
        if self._bar is not None:
            self._show_progress(trainer, done=True)
        if self.interactive:
            self.history = read_history(trainer.default_root_dir) or self.history
            self._redraw()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._fitting = False
        if self.interactive:
            # What was trained until the error (or the stop) stays on screen, complete.
            self.history = read_history(trainer.default_root_dir) or self.history
            self._redraw()

    def report(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        if self.interactive:
            # The run folder's records: earlier (resumed) iterations and validation rows included.
            self.history = read_history(trainer.default_root_dir) or [*self.history, record]
            self._redraw()
            return
        self.history.append(record)
        print(progress_line(record, trainer.max_steps, self.layout), flush=True)

    # Drawing ---------------------------------------------------------------------------------------

    def final_figure(self, run_dir: str | Path) -> Any:
        """The training figure of the finished run in ``run_dir``: every record of its
        ``metrics.jsonl`` and its final AP (``eval.json``). In a live session the figure on screen
        is redrawn with it too. Returns the figure (to save)."""
        self._run_dir = Path(run_dir)
        self.history = read_history(run_dir)
        key = (self._run_dir, len(self.history), (self._run_dir / EVAL_FILE).is_file())
        if self._final is not None and self._final[0] == key:
            return self._final[1]  # drawn (and shown) already, when training returned
        figure = self._figure()
        if self._handle is not None:
            self._show(figure)
        self._final = (key, figure)
        return figure

    def _figure(self) -> Any:
        final = read_final_eval(self._run_dir) if self._run_dir is not None else None
        return plot_training_curves({"this run": self.history}, layout=self.layout or CurveLayout(),
                                    final_evals={"this run": final} if final else None, title=self.title)

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
        parts = [f"{step}/{total} it ({100 * step // total} %)",
                 f"{rate:.2f} it/s" if math.isfinite(rate) else "- it/s"]
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
        self._show(self._figure())

    def _show(self, figure: Any) -> None:
        buffer = io.BytesIO()
        # No bbox_inches="tight": every redraw has the same pixel size, so its text never shrinks.
        figure.savefig(buffer, format="png", dpi=SAVE_DPI, facecolor="white")
        self.redraws += 1
        # One display that is replaced in place, not a new image per report.
        self._handle = show_png(buffer.getvalue(), dpi=SAVE_DPI, handle=self._handle)


def _number(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"
