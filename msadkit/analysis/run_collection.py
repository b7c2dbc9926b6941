"""Find run folders under a few roots and write their AP table in every format.

The rows themselves come from :mod:`msadkit.analysis.ap_table`; this module decides which folders
are runs, in which order the rows appear and where the table files go.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from msadkit.analysis.ap_table import table_to_csv, table_to_latex, table_to_markdown
from msadkit.errors import MsadkitError

__all__ = ["is_run_folder", "find_run_folders", "read_eval", "sort_rows", "write_ap_tables"]

_ROLE_ORDER = {"teacher": 0, "baseline": 1, "student": 2}
# Folders a run writes inside itself; runs are never nested in them.
_SKIPPED_DIRS = {"checkpoints", "logs", "tensorboard", "figures", ".ipynb_checkpoints"}


def is_run_folder(path: Path) -> bool:
    """A folder with ``summary.json``, or with ``eval.json`` next to ``config.yaml``."""
    return (path / "summary.json").is_file() or ((path / "eval.json").is_file() and (path / "config.yaml").is_file())


def find_run_folders(roots: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run folder at or below ``roots``, each once, in path order.

    Raises:
        MsadkitError: a root does not exist.
    """
    found: dict[Path, None] = {}
    for root in roots:
        root = Path(root).expanduser()
        if not root.exists():
            raise MsadkitError(f"run folder or search root {root} does not exist")
        for folder, dirs, _files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
            if is_run_folder(Path(folder)):
                found[Path(folder).resolve()] = None
    return sorted(found)


def read_eval(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The COCO metrics of a finished run (its ``eval.json``).

    Raises:
        MsadkitError: the run has no ``eval.json`` (it is unfinished or was trained without
            evaluation) or the file is not a JSON object.
    """
    import json

    path = Path(run_dir) / "eval.json"
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise MsadkitError(
            f"{path} does not exist: {run_dir} is not a finished, evaluated run (train it to the end, or "
            "run `msadkit evaluate` on it)"
        ) from None
    except ValueError as exc:
        raise MsadkitError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MsadkitError(f"{path} does not hold a JSON object of metrics")
    return data


def sort_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows grouped like MSAD's table: by backbone and width, then teacher, baselines, students,
    high before low resolution, then method name."""

    def key(row: Mapping[str, Any]) -> tuple:
        width = row.get("width")
        return (
            str(row.get("backbone") or ""),
            -(width if isinstance(width, (int, float)) and not math.isnan(width) else -1.0),
            _ROLE_ORDER.get(str(row.get("role")), 3),
            str(row.get("resolution") or ""),
            str(row.get("method") or ""),
            str(row.get("run") or ""),
        )

    return sorted(rows, key=key)


def write_ap_tables(
    rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, *, stem: str = "ap_table"
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.tex`` and ``<stem>.csv`` into ``out_dir``.

    Returns:
        ``{"markdown": path, "latex": path, "csv": path}``.
    """
    from msadkit.utils.atomic import write_text_atomic

    out_dir = Path(out_dir)
    paths = {
        "markdown": write_text_atomic(out_dir / f"{stem}.md", table_to_markdown(rows)),
        "latex": write_text_atomic(out_dir / f"{stem}.tex", table_to_latex(rows)),
    }
    table_to_csv(rows, out_dir / f"{stem}.csv")
    paths["csv"] = out_dir / f"{stem}.csv"
    return paths
