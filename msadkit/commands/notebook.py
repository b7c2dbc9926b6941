"""`msadkit notebook`: list, run and sweep the parameterized notebooks with papermill."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

__all__ = ["add_parser", "run", "parse_value", "split_values", "parse_grid"]


def parse_value(text: str) -> Any:
    """A parameter value from the command line: YAML (``3``, ``0.5``, ``true``, ``null``,
    ``[a, b]``, ``{type: gid}``), ``None`` as None, ``1e-3`` as a float, anything else as text."""
    if text == "None":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` at the commas that are not inside brackets, braces or quotes, so that
    ``[a,b],[c]`` gives two values."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["width=0.25,0.5", "losses=[adl],[gid]"]`` -> ``{"width": [0.25, 0.5], "losses": [["adl"], ["gid"]]}``.

    Raises:
        ConfigError: an item is not ``key=v1,v2``, a key repeats, or a value is empty.
    """
    from msadkit.errors import ConfigError

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid {item!r} must have the form key=v1,v2,...")
        if key in grid:
            raise ConfigError(f"--grid key {key!r} is given twice")
        texts = split_values(values)
        if any(not t for t in texts):
            raise ConfigError(f"--grid {item!r} has an empty value")
        grid[key] = [parse_value(t) for t in texts]
    return grid


def _parameters(pairs: list[list[str]] | None) -> dict[str, Any]:
    return {key: parse_value(value) for key, value in (pairs or [])}


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), dest="parameters",
                   help="set a parameter of the notebook's parameters cell (value parsed as YAML); repeatable")
    p.add_argument("--force", action="store_true", help="execute again even if the run folder holds a finished run")
    p.add_argument("--kernel", help="Jupyter kernel name (default: the interpreter running msadkit)")
    p.add_argument("--timeout", type=float, help="seconds one cell may run (default: no limit)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "notebook",
        help="run the parameterized notebooks headless (papermill), alone or as a grid",
        description="Execute the kit's notebooks with papermill: the executed copy, the notebook's figures and "
        "results.json go into one run folder; cell output is shown live.",
    )
    actions = p.add_subparsers(dest="notebook_command", required=True)
    actions.add_parser("list", help="list the notebooks and their parameters")

    copy_p = actions.add_parser(
        "copy",
        help="copy the notebooks into a folder (to open in JupyterLab after installing the wheel)",
        description="Copy the kit's notebooks into DIR. `msadkit notebook run DIR/01_teacher_training.ipynb` runs a "
        "copy; edits to the copies stay yours.",
    )
    copy_p.add_argument("dir", help="folder to copy the notebooks into (created if needed)")
    copy_p.add_argument("--force", action="store_true", help="replace notebooks of the same names already in DIR")

    run_p = actions.add_parser("run", help="execute one notebook into a run folder")
    run_p.add_argument(
        "name", help="notebook name or number (01_teacher_training, 01, teacher_training) or .ipynb path"
    )
    run_p.add_argument("--out", help="run folder (default: runs/notebooks/<notebook>)")
    _add_run_options(run_p)

    sweep_p = actions.add_parser("sweep", help="execute one notebook once per point of a parameter grid")
    sweep_p.add_argument("name", help="notebook name or number, or .ipynb path")
    sweep_p.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                         help="a swept parameter and its values; repeat for a cartesian product")
    sweep_p.add_argument("--out", help="parent folder of the runs (default: runs/sweeps/<notebook>)")
    _add_run_options(sweep_p)


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"force": args.force, "kernel_name": args.kernel, "execution_timeout": args.timeout}


def run(args: argparse.Namespace) -> int:
    from msadkit.notebook.runner import list_notebooks, notebook_parameters, resolve_notebook, run_notebook
    from msadkit.notebook.sweep import SweepError, run_sweep

    if args.notebook_command == "copy":
        from msadkit.notebook.copies import copy_notebooks

        for path in copy_notebooks(args.dir, overwrite=args.force):
            print(path)
        return 0
    if args.notebook_command == "list":
        for name in list_notebooks():
            print(name)
            for key, info in notebook_parameters(name).items():
                help_text = f"  # {info['help']}" if info["help"] else ""
                print(f"    {key} = {info['default']}{help_text}")
        return 0

    source = resolve_notebook(args.name)
    if args.notebook_command == "run":
        out = args.out or f"runs/notebooks/{source.stem}"
        result = run_notebook(source, out, _parameters(args.parameters), **_run_kwargs(args))
        state = "already finished, not executed again" if result.skipped else f"finished in {result.duration_s:.0f} s"
        print(f"{source.stem}: {state}")
        print(f"run folder: {result.run_dir}")
        print(f"executed notebook: {result.executed_notebook}")
        for name, path in result.results.get("figures", {}).items():
            print(f"figure {name}: {result.run_dir / path}")
        return 0

    out = args.out or f"runs/sweeps/{source.stem}"
    try:
        runs = run_sweep(source, out, parse_grid(args.grid), _parameters(args.parameters), **_run_kwargs(args))
    except SweepError as exc:
        _print_runs(exc.runs)
        raise
    _print_runs(runs)
    return 0


def _print_runs(runs: list) -> None:
    for result in runs:
        state = "skipped (finished before)" if result.skipped else result.status
        print(f"{state:>26}  {result.run_dir}")
