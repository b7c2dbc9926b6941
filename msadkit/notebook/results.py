"""What a notebook produced, as ``results.json`` in its output folder, plus its saved figures.

Notebooks record metric values and the files they wrote through :class:`NotebookResults`; tests
and sweeps read them back with :func:`read_results` instead of parsing notebook outputs. The file
is rewritten atomically after every record, and ``"complete": true`` is set only by
:meth:`NotebookResults.finish` in the notebook's last cell, so a reader can tell a notebook that
stopped half-way from one that ran to the end; in a kernel, a cell that raises before then
deletes the file, so a failed run leaves no results behind.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_NAME",
    "FIGURES_DIR",
    "NotebookResults",
    "read_results",
    "read_json_object",
    "is_interactive",
    "to_jsonable",
    "show_png",
    "show_markdown",
]

RESULTS_NAME = "results.json"
FIGURES_DIR = "figures"
BATCH_ENV_VAR = "MSADKIT_NOTEBOOK_BATCH"


def is_interactive() -> bool:
    """Whether code runs in a Jupyter kernel that a person is looking at.

    False outside IPython kernels and in kernels started by the kit's batch runner (which sets
    ``MSADKIT_NOTEBOOK_BATCH``); there widgets would render nowhere, so notebooks save figures only.
    """
    if os.environ.get(BATCH_ENV_VAR):
        return False
    return _in_kernel()


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _close(figure: Any) -> None:
    """Close a pyplot-managed figure (a plain ``Figure`` needs nothing)."""
    import matplotlib.pyplot as plt

    if plt.fignum_exists(getattr(figure, "number", -1)):
        plt.close(figure)


def show_png(data: bytes, *, dpi: float, handle: Any = None) -> Any:
    """Show PNG bytes in the cell output with no text alternative (a batch run's executed notebook
    would otherwise read ``<IPython.core.display.Image object>``), at the size the figure has on
    screen whatever ``dpi`` it was drawn at; replaces ``handle``'s output in place when given.

    Returns:
        The display handle (to update later).
    """
    from IPython.display import display

    from msadkit.analysis.figure_style import SCREEN_DPI

    bundle = {"image/png": base64.b64encode(data).decode("ascii")}
    width = _png_width(data)
    metadata = {"image/png": {"width": round(width * SCREEN_DPI / dpi)}} if width else {}
    if handle is None:
        return display(bundle, raw=True, metadata=metadata, display_id=True)
    handle.update(bundle, raw=True, metadata=metadata)
    return handle


def _png_width(data: bytes) -> int:
    # A PNG's IHDR chunk holds the width at bytes 16..20, big-endian.
    return int.from_bytes(data[16:20], "big") if data[:8] == b"\x89PNG\r\n\x1a\n" else 0


def show_markdown(text: str) -> None:
    """Show Markdown (a table) in the cell; its plain-text form is the Markdown itself, so a batch
    run's log and executed notebook read as a table, not ``<IPython.core.display.Markdown object>``."""
    from IPython.display import display

    display({"text/markdown": text, "text/plain": text}, raw=True)


def to_jsonable(value: Any) -> Any:
    """Tensors, numpy values, paths and tuples as plain JSON values (NaN/inf become None)."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 and value.dim() == 0 else value.tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    raise TypeError(f"cannot record a value of type {type(value).__name__} in results.json")


class NotebookResults:
    """The ``results.json`` of one notebook run.

    Args:
        output_dir: the notebook's output folder (created if needed).
        notebook: the notebook's name, stored under ``"notebook"``.
        interactive: show figures as well as saving them; None asks :func:`is_interactive`.

    Attributes:
        data: everything recorded so far.
    """

    def __init__(self, output_dir: str | os.PathLike, notebook: str, *, interactive: bool | None = None) -> None:
        self.output_dir = Path(output_dir).expanduser()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.interactive = is_interactive() if interactive is None else bool(interactive)
        self.data: dict[str, Any] = {"notebook": notebook, "complete": False, "figures": {}, "files": {}}
        self.save()
        self._remove_on_failure()

    def _remove_on_failure(self) -> None:
        """In a kernel, delete ``results.json`` when a cell raises before :meth:`finish`: a failed
        (or stopped) run leaves no results that look like a run's."""
        if not _in_kernel():
            return
        from IPython import get_ipython

        events = get_ipython().events

        def after_cell(result: Any) -> None:
            if self.data["complete"] or not result.success:
                if not self.data["complete"]:
                    self.path.unlink(missing_ok=True)
                events.unregister("post_run_cell", after_cell)

        events.register("post_run_cell", after_cell)

    @property
    def path(self) -> Path:
        return self.output_dir / RESULTS_NAME

    @property
    def figures_dir(self) -> Path:
        return self.output_dir / FIGURES_DIR

    def record(self, key: str, value: Any) -> None:
        """Store ``value`` (made JSON-able) under ``key``.

        Returns nothing, so that a cell ending in a record does not echo the value.
        """
        self.data[key] = to_jsonable(value)
        self.save()

    def record_file(self, key: str, path: str | os.PathLike) -> None:
        """Record a file the notebook wrote, relative to the output folder when inside it."""
        self.data["files"][key] = self._relative(Path(path))
        self.save()

    def save_figure(self, figure: Any, name: str, *, dpi: int | None = None, show: bool = True) -> Path:
        """Save a matplotlib figure as ``figures/<name>.png``, record it under ``figures`` and show it.

        Saved at print quality (:data:`msadkit.analysis.figure_style.SAVE_DPI` unless ``dpi`` says
        otherwise). Inside a Jupyter kernel (live or papermill) the saved PNG is displayed in the
        cell at its on-screen size (no text stand-in), so the executed notebook carries the same
        image as the file; the figure is then closed so that the inline backend does not show it a
        second time.
        """
        from msadkit.analysis.figure_style import SAVE_DPI

        dpi = int(dpi or SAVE_DPI)
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        path = self.figures_dir / f"{name}.png"
        figure.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05, facecolor="white")
        self.data["figures"][name] = self._relative(path)
        self.save()
        if show and _in_kernel():
            show_png(path.read_bytes(), dpi=dpi)
        _close(figure)
        return path

    def finish(self) -> Path:
        """Mark the results complete (the notebook's last cell calls this)."""
        self.data["complete"] = True
        return self.save()

    def save(self) -> Path:
        from msadkit.utils.atomic import write_text_atomic

        return write_text_atomic(self.path, json.dumps(self.data, indent=2) + "\n")

    def _relative(self, path: Path) -> str:
        try:
            return path.resolve().relative_to(self.output_dir.resolve()).as_posix()
        except ValueError:
            return str(path)


def read_json_object(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file is missing, unreadable or holds anything
    else: for the files of a run folder that a run writes only at some point (or not at all)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_results(output_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``results.json`` of a notebook output folder.

    Raises:
        MsadkitError: the file is missing or is not a JSON object.
    """
    from msadkit.errors import MsadkitError

    path = Path(output_dir) / RESULTS_NAME
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise MsadkitError(f"{path} does not exist: the notebook did not run in {output_dir}") from None
    except ValueError as exc:
        raise MsadkitError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MsadkitError(f"{path} does not hold a JSON object")
    return data
