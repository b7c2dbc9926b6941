"""Collect run folders into the paper-style AP table (Markdown, LaTeX, CSV).

Every run writes one folder (see DESIGN: the table is built only from these folders). A row is
read from, in order of preference:

1. ``run_dir/summary.json``, written by the engine at the end of a run::

       {"method": "msad_teacher", "backbone": "slimmable_resnet50", "width": 0.25,
        "role": "teacher", "resolution": "high+low", "schedule": "demo-300it",
        "capacity": 0.085, "branch": "fused", "eval": {"AP": 33.2, "AP50": ..., ...}}

   Every key but ``"eval"`` may be missing or ``null``; ``"branch"`` may also sit inside
   ``"eval"``.
2. otherwise ``run_dir/eval.json`` (``{"AP": ..., "AP50": ..., ..., "branch": optional}``) plus the
   resolved ``run_dir/config.yaml``, from which the columns are derived: ``method``, ``role`` and
   ``schedule`` from the top-level keys of those names, ``backbone`` and ``width`` from
   ``model.backbone.name`` / ``model.backbone.width`` (width only for the slimmable backbone),
   ``resolution`` from ``model.resolution``, or ``"high+low"`` when ``model.arch`` is
   ``msad_teacher``.

When a row has no capacity, it is computed from backbone, width and resolution with
:mod:`msadkit.modeling.backbones.capacity` (backbone bottom-up MACs at 800x1333 / 400x667 relative to the
width-1.0 ResNet-50 at 800x1333, MSAD's definition, whatever image size the run was evaluated at);
a backbone the FLOP counter does not know leaves it empty.

Display formats: AP values with one decimal, width and capacity with two (as in MSAD's table:
0.25, 1.25), a missing value or NaN as "-". The CSV keeps the unrounded numbers and writes a
missing value as an empty cell.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from msadkit.errors import MsadkitError
from msadkit.modeling.backbones.capacity import capacity_of
from msadkit.utils.atomic import write_text_atomic
from msadkit.utils.run_folder import AP_METRICS, summary_fields

__all__ = [
    "TABLE_COLUMNS",
    "AP_COLUMNS",
    "PAPER_COLUMNS",
    "collect_runs",
    "read_run",
    "run_names",
    "format_cell",
    "table_to_markdown",
    "table_to_latex",
    "table_to_csv",
]

TABLE_COLUMNS: tuple[str, ...] = (
    "method",
    "backbone",
    "capacity",
    "schedule",
    "width",
    "role",
    "resolution",
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    # Two runs of one recipe (seeds, lengths) give rows that agree on every other column.
    "run",
)
AP_COLUMNS: tuple[str, ...] = AP_METRICS
# The LaTeX table goes into a paper: the run folder's name stays out of it.
PAPER_COLUMNS: tuple[str, ...] = tuple(column for column in TABLE_COLUMNS if column != "run")

_TEXT_COLUMNS = ("method", "backbone", "schedule", "role", "resolution", "branch", "run")
_TWO_DECIMAL_COLUMNS = ("width", "capacity")
_CSV_EXTRA_COLUMNS = ("branch",)
_LATEX_HEADERS = {
    "AP50": "AP$_{50}$",
    "AP75": "AP$_{75}$",
    "APs": "AP$_S$",
    "APm": "AP$_M$",
    "APl": "AP$_L$",
}
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
def collect_runs(run_dirs: Iterable[str | os.PathLike], *, compute_capacity: bool = True) -> list[dict]:
    """Read one table row per run folder, in the order given.

    Args:
        run_dirs: run folders, each with ``summary.json`` or with ``eval.json`` and ``config.yaml``.
        compute_capacity: fill a missing capacity from backbone, width and resolution.

    Returns:
        One dict per run with every key of :data:`TABLE_COLUMNS` (``"run"`` is its readable name,
        :func:`run_names`)
        plus ``"branch"`` (the evaluated teacher branch or ``None``). AP values are floats (NaN
        when absent); the other columns are ``None`` when unknown.

    Raises:
        MsadkitError: a folder or a needed file is missing, or a file does not parse or has values
            of the wrong type; the message names the folder or file.
    """
    run_dirs = list(run_dirs)
    rows = [read_run(run_dir, compute_capacity=compute_capacity) for run_dir in run_dirs]
    for row, name in zip(rows, run_names(run_dirs)):
        row["run"] = name
    return rows


def run_names(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Readable names of run folders: each one's path below the folder they all share
    (``01_teacher_training``, ``02_student_distillation/student``), so two runs called ``student``
    in different experiments stay apart; a lone folder is its own name."""
    paths = [Path(os.path.normpath(Path(d).expanduser().absolute())) for d in run_dirs]
    if len(paths) < 2:
        return [path.name for path in paths]
    try:
        common = Path(os.path.commonpath(paths))
    except ValueError:  # folders on different drives share nothing
        return [path.name for path in paths]
    return [path.relative_to(common).as_posix() if path != common else path.name for path in paths]


def read_run(run_dir: str | os.PathLike, *, compute_capacity: bool = True) -> dict:
    """Read the table row of one run folder (see :func:`collect_runs`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MsadkitError(f"run folder {run_dir} does not exist or is not a folder")
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        summary = _read_json_object(summary_path)
        evaluation = summary.get("eval")
        if not isinstance(evaluation, dict):
            raise MsadkitError(f"{summary_path}: key 'eval' is missing or not an object of AP values")
        fields = {key: summary.get(key) for key in TABLE_COLUMNS if key not in AP_COLUMNS}
        fields["branch"] = summary.get("branch", evaluation.get("branch"))
        source = summary_path
    else:
        eval_path, config_path = run_dir / "eval.json", run_dir / "config.yaml"
        absent = [path.name for path in (eval_path, config_path) if not path.is_file()]
        if absent:
            raise MsadkitError(
                f"run folder {run_dir} has no summary.json and lacks {', '.join(absent)}; "
                "a finished run writes summary.json, or eval.json next to its config.yaml"
            )
        evaluation = _read_json_object(eval_path)
        fields = _fields_from_config(_read_yaml_object(config_path), config_path)
        fields["branch"] = evaluation.get("branch")
        source = eval_path

    row: dict[str, Any] = {"run": run_dir.name}
    for key in ("method", "backbone", "schedule", "role", "resolution", "branch"):
        value = fields.get(key)
        row[key] = None if value is None else str(value)
    for key in _TWO_DECIMAL_COLUMNS:
        row[key] = _optional_number(fields.get(key), key, source)
    for key in AP_COLUMNS:
        value = _optional_number(evaluation.get(key), key, source)
        row[key] = math.nan if value is None else value
    if compute_capacity and row["capacity"] is None:
        row["capacity"] = capacity_of(row["backbone"], row["width"], row["resolution"])
    return {key: row[key] for key in (*TABLE_COLUMNS, *_CSV_EXTRA_COLUMNS)}


def table_to_markdown(rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A GitHub-flavoured Markdown table: text columns left-aligned, numbers right-aligned."""
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---:" if column not in _TEXT_COLUMNS else ":---" for column in columns) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [format_cell(column, row.get(column)).replace("|", r"\|") for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_to_latex(rows: Sequence[Mapping[str, Any]], *, columns: Sequence[str] = PAPER_COLUMNS) -> str:
    """A LaTeX ``tabular`` with booktabs rules (``\\usepackage{booktabs}``); text is escaped."""
    align = "".join("l" if column in _TEXT_COLUMNS else "r" for column in columns)
    header = " & ".join(_LATEX_HEADERS.get(column, _latex_escape(column)) for column in columns)
    lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule", header + r" \\", "\\midrule"]
    for row in rows:
        cells = [_latex_escape(format_cell(column, row.get(column))) for column in columns]
        lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def table_to_csv(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    *,
    columns: Sequence[str] = (*TABLE_COLUMNS, *_CSV_EXTRA_COLUMNS),
) -> None:
    """Write the rows as CSV with a header line; numbers unrounded, missing values and NaN empty.

    The file is written to a temporary name and moved into place, so a reader never sees half a
    table.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: _csv_value(row.get(column)) for column in columns})
    write_text_atomic(Path(path), buffer.getvalue())


def format_cell(column: str, value: Any) -> str:
    """Display text of one cell: AP one decimal, width/capacity two, missing or NaN as "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column in AP_COLUMNS:
        return f"{float(value):.1f}"
    if column in _TWO_DECIMAL_COLUMNS:
        return f"{float(value):.2f}"
    return str(value)


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def _read_mapping(path: Path, parse: Any, error: type[Exception], fmt: str, expected: str) -> dict:
    """Parse ``path`` with ``parse`` into a dict; every failure is one MsadkitError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = parse(handle)
    except error as exc:
        raise MsadkitError(f"{path} is not valid {fmt}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MsadkitError(f"{path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise MsadkitError(f"{path} holds a {type(data).__name__}, expected {expected}")
    return data


def _read_json_object(path: Path) -> dict:
    return _read_mapping(path, json.load, json.JSONDecodeError, "JSON", "a JSON object")


def _read_yaml_object(path: Path) -> dict:
    return _read_mapping(path, yaml.safe_load, yaml.YAMLError, "YAML", "a mapping of config keys")


def _fields_from_config(config: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Table columns from a resolved config (see the module docstring for the keys read)."""
    del path
    return {**summary_fields(dict(config)), "capacity": None}


def _optional_number(value: Any, key: str, source: Path) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MsadkitError(f"{source}: {key!r} is {value!r}, expected a number or null")
    return float(value)
