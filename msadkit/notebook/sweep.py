"""A grid of notebook runs: every combination of parameter values in its own run folder."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from msadkit.errors import ConfigError, MsadkitError
from msadkit.notebook.runner import (
    NotebookExecutionError,
    NotebookRun,
    check_parameter_names,
    json_normalised,
    resolve_notebook,
    run_notebook,
)
from msadkit.utils.run_folder import write_json_atomic

__all__ = ["SweepError", "expand_grid", "sweep_run_name", "run_sweep"]

logger = logging.getLogger(__name__)


class SweepError(MsadkitError):
    """Some runs of a sweep failed; ``runs`` holds every run, finished or not."""

    def __init__(self, message: str, runs: list["NotebookRun"]) -> None:
        super().__init__(message)
        self.runs = runs


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the last key varying fastest.

    Raises:
        ConfigError: a key has no values.
    """
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ConfigError(f"sweep grid key {key!r} needs a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    text = Path(text).name if isinstance(value, str) and "/" in text else text
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"


def sweep_run_name(combination: Mapping[str, Any]) -> str:
    """Folder name of one grid point: ``key-value`` pairs joined by ``__`` (file-name safe)."""
    return "__".join(f"{_slug(key)}-{_slug(value)}" for key, value in combination.items()) or "run"


def run_sweep(
    notebook: str | os.PathLike,
    out_dir: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]],
    parameters: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    **run_kwargs: Any,
) -> list[NotebookRun]:
    """Execute a notebook once per grid point, each into ``out_dir/<sweep_run_name>``.

    Runs go one after the other; a failing run does not stop the others, and finished runs are
    kept (and skipped when the sweep is run again). ``out_dir/sweep.json`` lists every run with
    its status.

    Args:
        notebook: a notebook name or path.
        out_dir: parent folder of the run folders.
        grid: parameter name -> values; the cartesian product is run.
        parameters: values shared by every run (a grid value wins over them).
        force: execute finished runs again.
        run_kwargs: further arguments of :func:`run_notebook`.

    Returns:
        Every run, in grid order.

    Raises:
        ConfigError: a parameter or grid key the notebook does not declare (nothing runs).
        SweepError: one or more runs failed; the message names each failing run folder and its
            error, and the finished runs stay in place.
    """

    out_dir = Path(out_dir).expanduser().resolve()
    combinations = expand_grid(grid)
    names = [sweep_run_name(c) for c in combinations]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep grid values give clashing run folder names: {names}")
    source = resolve_notebook(notebook)
    check_parameter_names(source, {**(parameters or {}), **grid})
    runs: list[NotebookRun] = []
    for index, (combination, name) in enumerate(zip(combinations, names), start=1):
        run_dir = out_dir / name
        logger.info("sweep %s: run %d/%d in %s", source.stem, index, len(combinations), run_dir)
        params = {**(parameters or {}), **combination}
        try:
            runs.append(run_notebook(source, run_dir, params, force=force, **run_kwargs))
        except (NotebookExecutionError, ConfigError) as exc:
            logger.error("sweep %s: run %s failed: %s", source.stem, run_dir, exc)
            runs.append(NotebookRun(source, run_dir, params, "failed", error=str(exc)))
        write_json_atomic(out_dir / "sweep.json", _sweep_summary(source, grid, runs, names))
    failed = [run for run in runs if run.status != "finished"]
    if failed:
        lines = "\n".join(f"  {run.run_dir}: {run.error}" for run in failed)
        raise SweepError(
            f"{len(failed)} of {len(runs)} runs of {source.stem} failed (the {len(runs) - len(failed)} "
            f"finished ones are kept in {out_dir}; running the sweep again executes only the failed ones):\n{lines}",
            runs,
        )
    return runs


def _sweep_summary(
    source: Path, grid: Mapping[str, Sequence[Any]], runs: Iterable[NotebookRun], names: list[str]
) -> dict:
    done = {run.run_dir.name: run for run in runs}
    return {
        "notebook": source.stem,
        "grid": json_normalised(grid),
        "runs": [
            {
                "run_dir": name,
                "status": done[name].status if name in done else "pending",
                "skipped": done[name].skipped if name in done else False,
                "error": done[name].error if name in done else None,
            }
            for name in names
        ],
    }
