"""Run folders named by notebook parameters: one ``runs_root`` for the usual layout, clear errors.

The notebooks read earlier runs laid out as the demo (``msadkit demo --out DIR``) and the notebooks'
defaults lay them out: ``DIR/01_teacher_training``, ``DIR/02_student_distillation/student`` and
``.../baseline``. A run parameter left at None means that place under ``runs_root``; a path given
explicitly is used as is. Relative paths resolve from the kernel's working folder, which in
JupyterLab is the notebook's folder (``notebooks/`` when opened from the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

from msadkit.errors import ConfigError
from msadkit.utils.run_folder import FINAL_WEIGHTS_NAME, SUMMARY_NAME

__all__ = ["STANDARD_RUNS", "notebook_run_folder", "notebook_search_folders"]

# Where each run sits under a runs root (the demo's and the notebooks' default layout).
STANDARD_RUNS = {
    "teacher_run": "01_teacher_training",
    "student_run": "02_student_distillation/student",
    "baseline_run": "02_student_distillation/baseline",
}


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
        ConfigError: naming the parameter and the absolute path tried, when the folder does not
            exist or holds no finished run (``model_final.pth`` and ``summary.json``).
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
    absolute = path.absolute()
    where = f" (relative paths resolve from {Path.cwd()})" if not path.is_absolute() else ""
    if not absolute.is_dir():
        raise ConfigError(
            f"notebook parameter {source}: no run folder at {absolute}{where}; train it first, or set runs_root "
            "to a finished demo (e.g. runs_root = '../runs/demo' after `make demo`)"
        )
    missing = [name for name in (FINAL_WEIGHTS_NAME, SUMMARY_NAME) if not (absolute / name).is_file()]
    if missing:
        raise ConfigError(
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
            raise ConfigError(
                f"notebook parameter {parameter}: {str(entry)!r} is not a folder ({path.absolute()} does not exist){where}"
            )
        folders.append(path.resolve())
    return folders
