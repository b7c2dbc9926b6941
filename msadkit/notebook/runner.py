"""Execute the kit's parameterized notebooks with papermill, one run folder each (grids: ``sweep``).

Every execution owns one run folder. The notebook writes its outputs there (its ``output_dir``
parameter is set to the folder), the executed copy goes next to them, and ``notebook_run.json``
records the notebook, the parameters and the outcome. A run counts as *finished* when that record
says ``"finished"``, which is written only after papermill returned without error and the notebook
marked its ``results.json`` complete (its last cell does). A finished run is skipped when it is
asked for again with the same parameters; an unfinished or failed one is executed again (the
training helpers the notebooks use resume an interrupted training run from its last checkpoint).

Papermill settings chosen against its known pain points: cell output is logged live
(``log_output=True``), a slow IOPub channel after a long cell is waited for instead of failing the
run, and the kernel runs the interpreter that runs this code (not whatever ``python3`` kernel spec
happens to be installed), so a fresh virtual environment works without registering a kernel.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from msadkit.errors import ConfigError, MsadkitError
from msadkit.notebook.kernel import current_interpreter_kernel_manager
from msadkit.notebook.results import RESULTS_NAME, read_json_object

__all__ = [
    "NOTEBOOK_NAMES",
    "RUN_RECORD_NAME",
    "NotebookRun",
    "NotebookExecutionError",
    "notebooks_dir",
    "list_notebooks",
    "resolve_notebook",
    "notebook_parameters",
    "read_run_record",
    "is_finished",
    "run_notebook",
]

NOTEBOOK_NAMES: tuple[str, ...] = (
    "01_teacher_training",
    "02_student_distillation",
    "03_feature_alignment",
    "04_ap_table",
    "05_method_comparison",
)
RUN_RECORD_NAME = "notebook_run.json"
NOTEBOOKS_ENV_VAR = "MSADKIT_NOTEBOOKS"
PACKAGED_NOTEBOOKS_DIR = "templates"  # where a wheel carries the notebooks (setup.py copies them)
# Parameters that name the run folder itself; a moved folder is still the same run.
_LOCATION_PARAMETERS = ("output_dir",)

logger = logging.getLogger(__name__)


class NotebookExecutionError(MsadkitError):
    """A notebook raised while being executed; the message names the run folder and the error."""


@dataclass
class NotebookRun:
    """Outcome of one notebook execution.

    Attributes:
        notebook: the source notebook.
        run_dir: the run folder.
        parameters: the parameters it ran with (``output_dir`` included).
        status: ``"finished"`` or ``"failed"``.
        skipped: True when a finished run with the same parameters was found and not executed.
        error: one line describing the failure, or None.
        duration_s: seconds the execution took (0 when skipped).
        results: the notebook's ``results.json`` (empty for a failed run).
    """

    notebook: Path
    run_dir: Path
    parameters: dict[str, Any]
    status: str
    skipped: bool = False
    error: str | None = None
    duration_s: float = 0.0
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def executed_notebook(self) -> Path:
        """The executed copy, next to the run's other outputs."""
        return self.run_dir / self.notebook.name


# Locating notebooks ----------------------------------------------------------------------------


def notebooks_dir() -> Path:
    """The folder holding the packaged notebooks.

    ``$MSADKIT_NOTEBOOKS`` when set; else the copies a wheel carries (``templates/`` here, copied
    from ``notebooks/`` by setup.py); else ``notebooks/`` of the checkout an editable install runs.

    Raises:
        ConfigError: none exists.
    """
    configured = os.environ.get(NOTEBOOKS_ENV_VAR)
    if configured and Path(configured).expanduser().is_dir():
        return Path(configured).expanduser()
    candidates = [
        Path(__file__).resolve().parent / PACKAGED_NOTEBOOKS_DIR,
        Path(__file__).resolve().parents[2] / "notebooks",
    ]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.ipynb")):
            return candidate
    looked = [configured, *candidates] if configured else candidates
    raise ConfigError(
        f"notebook folder not found (looked in {', '.join(str(c) for c in looked)}); install msadkit from a "
        f"wheel or a clone of the repository, or set {NOTEBOOKS_ENV_VAR} to the notebooks folder"
    )


def list_notebooks() -> list[str]:
    """Names (file stems) of the notebooks in :func:`notebooks_dir`, in order."""
    return sorted(path.stem for path in notebooks_dir().glob("*.ipynb"))


def resolve_notebook(name: str | os.PathLike) -> Path:
    """The notebook file for a path, a full name (``02_student_distillation``), its number (``02``
    or ``2``) or its name without the number (``student_distillation``).

    Raises:
        ConfigError: nothing or more than one notebook matches.
    """
    path = Path(name)
    if path.suffix == ".ipynb":
        if path.is_file():
            return path
        raise ConfigError(f"notebook {path} does not exist")
    folder = notebooks_dir()
    text = str(name)
    available = sorted(folder.glob("*.ipynb"))
    matches = [
        nb
        for nb in available
        if text == nb.stem
        or (text.isdigit() and nb.stem.split("_", 1)[0].isdigit() and int(text) == int(nb.stem.split("_", 1)[0]))
        or text == nb.stem.split("_", 1)[-1]
    ]
    if len(matches) == 1:
        return matches[0]
    names = ", ".join(nb.stem for nb in available) or "none"
    if not matches:
        raise ConfigError(f"no notebook named {text!r} in {folder} (available: {names})")
    raise ConfigError(f"notebook name {text!r} is ambiguous in {folder}: {', '.join(m.stem for m in matches)}")


def notebook_parameters(name: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The parameters of a notebook's ``parameters`` cell: name -> ``{"default", "type", "help"}``."""
    import papermill

    path = resolve_notebook(name)
    papermill_logger = logging.getLogger("papermill")
    level = papermill_logger.level
    papermill_logger.setLevel(logging.WARNING)  # inspection logs the notebook path at INFO
    try:
        inferred = papermill.inspect_notebook(str(path))
    finally:
        papermill_logger.setLevel(level)
    return {
        key: {"default": value.get("default"), "type": value.get("inferred_type_name"), "help": value.get("help", "")}
        for key, value in inferred.items()
    }


def _ensure_live_log() -> None:
    """Route papermill's cell output log to stderr when the caller configured no logging."""
    papermill_logger = logging.getLogger("papermill")
    if not papermill_logger.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        papermill_logger.addHandler(handler)
    if papermill_logger.getEffectiveLevel() > logging.INFO:
        papermill_logger.setLevel(logging.INFO)


def check_parameter_names(source: Path, parameters: Mapping[str, Any]) -> None:
    """Refuse a parameter the notebook does not declare (papermill would only warn, and the
    notebook would run with the default)."""
    declared = notebook_parameters(source)
    if not declared:  # no parameters cell to check against
        return
    unknown = sorted(set(parameters) - set(declared) - set(_LOCATION_PARAMETERS))
    if unknown:
        raise ConfigError(
            f"notebook {source.stem} has no parameter {', '.join(unknown)} (its parameters: {', '.join(declared)})"
        )


# Run records -----------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def json_normalised(parameters: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(parameters)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"notebook parameters must be JSON values (str, number, bool, None, list, dict): {exc}"
        ) from None


def _comparable(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in parameters.items() if k not in _LOCATION_PARAMETERS}


def read_run_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``notebook_run.json`` of a run folder, or None if there is none (or it is unreadable)."""
    return read_json_object(Path(run_dir) / RUN_RECORD_NAME)


def is_finished(run_dir: str | os.PathLike) -> bool:
    """Whether the run folder holds a finished notebook run (record says so, results exist)."""
    record = read_run_record(run_dir)
    return bool(record) and record.get("status") == "finished" and _read_results(Path(run_dir)).get("complete") is True


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    from msadkit.utils.run_folder import write_json_atomic

    write_json_atomic(run_dir / RUN_RECORD_NAME, record)


def _read_results(run_dir: Path) -> dict[str, Any]:
    return read_json_object(run_dir / RESULTS_NAME) or {}


def _error_line(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


# Execution -------------------------------------------------------------------------------------


def run_notebook(
    notebook: str | os.PathLike,
    run_dir: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    log_output: bool = True,
    kernel_name: str | None = None,
    execution_timeout: float | None = None,
    iopub_timeout: float = 60.0,
    start_timeout: float = 120.0,
) -> NotebookRun:
    """Execute a notebook with papermill into ``run_dir``.

    The notebook's ``output_dir`` parameter is set to ``run_dir`` (absolute), so what it writes and
    the executed copy ``run_dir/<notebook>.ipynb`` end up side by side.

    Args:
        notebook: a notebook name or path (see :func:`resolve_notebook`).
        run_dir: the run folder; created if needed.
        parameters: values for the notebook's ``parameters`` cell (JSON values).
        force: execute even if the folder holds a finished run.
        log_output: stream cell output to the ``papermill`` logger while it runs.
        kernel_name: a Jupyter kernel to use instead of the current interpreter.
        execution_timeout: seconds one cell may run; None waits for ever.
        iopub_timeout: seconds to wait for a cell's last output after it finished (papermill
            raises after its default of 4 s when a training cell floods the channel).
        start_timeout: seconds to wait for the kernel to start.

    Returns:
        The finished (or skipped) run.

    Raises:
        ConfigError: the folder holds a finished run made with other parameters (and not
            ``force``), or a parameter is not a JSON value or not declared by the notebook.
        NotebookExecutionError: a cell raised; the executed copy with the traceback stays in
            ``run_dir`` and ``notebook_run.json`` says ``"failed"``.
    """
    import papermill

    source = resolve_notebook(notebook)
    run_dir = Path(run_dir).expanduser().resolve()
    params = json_normalised({**(parameters or {}), "output_dir": str(run_dir)})
    check_parameter_names(source, params)

    record = read_run_record(run_dir)
    if record and not force and is_finished(run_dir):
        same = _comparable(record.get("parameters", {})) == _comparable(params)
        if record.get("notebook") == source.stem and same:
            logger.info("%s: finished run found, not executed again", run_dir)
            return NotebookRun(source, run_dir, params, "finished", skipped=True, results=_read_results(run_dir))
        raise ConfigError(
            f"{run_dir} holds a finished run of {record.get('notebook')} with other parameters "
            f"({_comparable(record.get('parameters', {}))}); choose another folder, or pass --force "
            "(force=True from Python) to execute it again"
        )

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULTS_NAME).unlink(missing_ok=True)
    record = {
        "notebook": source.stem,
        "source": str(source),
        "parameters": params,
        "status": "running",
        "started": _now(),
        "executed_notebook": source.name,
        "python": sys.executable,
    }
    _write_record(run_dir, record)
    if log_output:
        _ensure_live_log()
    engine_kwargs: dict[str, Any] = {"iopub_timeout": iopub_timeout}
    if kernel_name is None:
        engine_kwargs["kernel_manager_class"] = current_interpreter_kernel_manager()
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(source),
            str(run_dir / source.name),
            parameters=params,
            kernel_name=kernel_name,
            log_output=log_output,
            progress_bar=False,
            start_timeout=start_timeout,
            execution_timeout=execution_timeout,
            **engine_kwargs,
        )
    except Exception as exc:  # a cell raised, or the kernel died, timed out or did not start
        error = exc
    duration = time.perf_counter() - start
    if error is None and _read_results(run_dir).get("complete") is not True:
        error = NotebookExecutionError(f"the notebook ran to the end but did not mark {RESULTS_NAME} complete")
    record.update(ended=_now(), duration_s=round(duration, 1))
    if error is not None:
        # A failed run claims no results (the executed copy holds what it printed).
        (run_dir / RESULTS_NAME).unlink(missing_ok=True)
        record.update(status="failed", error=_error_line(error))
        _write_record(run_dir, record)
        raise NotebookExecutionError(
            f"notebook {source.stem} failed in run folder {run_dir}: {record['error']} "
            f"(the executed copy with the traceback is {run_dir / source.name})"
        ) from error
    record.update(status="finished", error=None)
    _write_record(run_dir, record)
    return NotebookRun(source, run_dir, params, "finished", duration_s=duration, results=_read_results(run_dir))
