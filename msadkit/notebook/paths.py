"""Run folders named by notebook parameters: one ``runs_root`` for the usual layout, clear errors.

The notebooks read earlier runs laid out as the demo (``msadkit demo --out DIR``) and the notebooks'
defaults lay them out: ``DIR/01_teacher_training``, ``DIR/02_student_distillation/student`` and
``.../baseline``. A run parameter left at None means that place under ``runs_root``; a path given
explicitly is used as is. Relative paths resolve from the kernel's working folder, which in
JupyterLab is the notebook's folder (``notebooks/`` when opened from the repository, any folder for
a copy made by ``msadkit notebook copy``).

A run that is not there is one line in the notebook (:class:`MissingRunError`, no traceback): the
parameter, the normalised absolute path tried, and what to do from where the notebook is: a
finished demo found nearby, ``make demo`` in a checkout, ``msadkit demo`` beside a copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from msadkit.errors import ConfigError
from msadkit.utils.run_folder import FINAL_WEIGHTS_NAME, SUMMARY_NAME

__all__ = ["STANDARD_RUNS", "MissingRunError", "notebook_run_folder", "notebook_search_folders", "runs_hint"]

# Where each run sits under a runs root (the demo's and the notebooks' default layout).
STANDARD_RUNS = {
    "teacher_run": "01_teacher_training",
    "student_run": "02_student_distillation/student",
    "baseline_run": "02_student_distillation/baseline",
}


class MissingRunError(ConfigError):
    """A notebook parameter names no (finished) run; shown in a notebook as its one line."""

    def _render_traceback_(self) -> list[str]:
        # IPython prints these lines instead of a traceback: the message says all there is.
        return [f"{type(self).__name__}: {self}"]


def _normalised(path: Path) -> Path:
    """The absolute path with ``..`` and ``.`` folded away (symbolic links left as written)."""
    return Path(os.path.normpath(path.expanduser().absolute()))


def _relative(path: Path, start: Path) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive
        return str(path)


def runs_hint(parameter: str, here: Path | None = None) -> str:
    """What to do when the runs a notebook reads are missing, for a notebook whose kernel works in
    ``here`` (the current folder): point ``runs_root`` at a finished demo found nearby; in the
    repository's ``notebooks/`` folder, ``make demo``; elsewhere (a copy), ``msadkit demo`` there."""
    here = _normalised(here or Path.cwd())
    wanted = STANDARD_RUNS.get(parameter, "01_teacher_training")
    for root in (here / "runs" / "demo", here.parent / "runs" / "demo", here / "runs" / "notebooks"):
        if (root / wanted / SUMMARY_NAME).is_file():
            return f"a finished run is at {root / wanted}: set runs_root = {_relative(root, here)!r}"
    if here.name == "notebooks" and (here.parent / "Makefile").is_file() and (here.parent / "msadkit").is_dir():
        return (f"run `make demo` in {here.parent} and set runs_root = '../runs/demo', or run the earlier "
                "notebooks first (with their default output_dir)")
    return (f"run `msadkit demo --out runs/demo` in {here} and set runs_root = 'runs/demo', or run the earlier "
            "notebooks in this folder first (with their default output_dir)")


def notebook_run_folder(
    parameter: str,
    value: str | os.PathLike | None,
    *,
    runs_root: str | os.PathLike | None,
    optional: bool = False,
) -> Path | None:
    """The absolute, finished run folder a notebook parameter names.

    Args:
        parameter: the notebook parameter (``teacher_run``, ``student_run`` or ``baseline_run``).
        value: its value; None for its standard place under ``runs_root``; False for no run
            (only when ``optional``).
        runs_root: the folder holding a demo's (or the notebooks') runs.
        optional: return None for ``False``, and for None when the standard place does not exist.

    Raises:
        MissingRunError: naming the parameter and the normalised absolute path tried, when the
            folder does not exist (with :func:`runs_hint`) or holds no finished run
            (``model_final.pth`` and ``summary.json``).
    """
    if optional and value is False:
        return None
    if value is None:
        if optional and (runs_root is None or not (Path(runs_root).expanduser() / STANDARD_RUNS[parameter]).is_dir()):
            return None
        if runs_root is None:
            raise ConfigError(f"{parameter} is None and runs_root is None: set one of the two notebook parameters")
        path = Path(runs_root).expanduser() / STANDARD_RUNS[parameter]
        source = f"{parameter}=None, so runs_root={str(runs_root)!r} + {STANDARD_RUNS[parameter]!r}"
    else:
        path = Path(value).expanduser()
        source = f"{parameter}={str(value)!r}"
    absolute = _normalised(path)
    where = f" (relative paths resolve from {Path.cwd()})" if not path.expanduser().is_absolute() else ""
    if not absolute.is_dir():
        raise MissingRunError(
            f"notebook parameter {source}: no run folder at {absolute}{where}; {runs_hint(parameter)}"
        )
    missing = [name for name in (FINAL_WEIGHTS_NAME, SUMMARY_NAME) if not (absolute / name).is_file()]
    if missing:
        raise MissingRunError(
            f"notebook parameter {source}: {absolute} is not a finished run (no {' or '.join(missing)}); "
            "finish its training (running its notebook again resumes it) or point the parameter elsewhere"
        )
    return absolute.resolve()


def notebook_search_folders(
    search_dirs: list[str | os.PathLike] | None,
    *,
    runs_root: str | os.PathLike | None,
) -> list[Path]:
    """The absolute folders 04 searches for run folders: ``search_dirs``, or ``[runs_root]`` when
    it is None.

    Raises:
        ConfigError: a folder does not exist, naming the notebook parameter and the absolute path.
    """
    parameter = "search_dirs"
    if search_dirs is None:
        parameter, search_dirs = "runs_root", [] if runs_root is None else [runs_root]
    if isinstance(search_dirs, (str, os.PathLike)):
        search_dirs = [search_dirs]
    folders = []
    for entry in search_dirs:
        path = Path(entry).expanduser()
        if not path.is_dir():
            where = f" (relative paths resolve from {Path.cwd()})" if not path.is_absolute() else ""
            raise MissingRunError(
                f"notebook parameter {parameter}: {str(entry)!r} is not a folder ({_normalised(path)} does not exist)"
                f"{where}; {runs_hint('teacher_run')}"
            )
        folders.append(path.resolve())
    return folders
