"""What a job is: a command, its run folder, the config it stands for, what it waits for.

Three builders make jobs the runner launches as subprocesses: :func:`training_job`
(``msadkit train``), :func:`notebook_job` (``msadkit notebook run``) and :func:`command_job` (any
other command, such as ``msadkit pretrain``). Each records the config the reuse rule compares
(:mod:`msadkit.jobs.record`): for training the config ``msadkit train`` resolves, for a notebook
its name and parameters, for a command its arguments.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from msadkit.config import load_config
from msadkit.config.run_length import run_length_overrides
from msadkit.errors import ConfigError
from msadkit.utils.run_folder import CHECKPOINT_DIR, EVAL_NAME, FINAL_WEIGHTS_NAME, last_checkpoint

__all__ = [
    "Job",
    "msadkit_command",
    "resolve_training_config",
    "training_job",
    "notebook_job",
    "command_job",
]

JOB_KINDS = ("train", "notebook", "command")
NOTEBOOK_RESULTS_NAME = "results.json"  # what a notebook run writes last (msadkit.notebook.results)


def msadkit_command(*arguments: str) -> list[str]:
    """``msadkit ARGUMENTS`` run by this interpreter (the package has no ``__main__``, its CLI has)."""
    return [sys.executable, "-m", "msadkit.cli", *arguments]


@dataclass(frozen=True)
class Job:
    """One subprocess of a plan.

    Attributes:
        name: unique in its plan; other jobs name it in ``needs``.
        kind: ``"train"``, ``"notebook"`` or ``"command"``.
        command: the command line (``command[0]`` the executable).
        run_dir: the folder the job owns: its ``job.json``, its log and (usually) its outputs.
        config: what the run computes, as JSON values; a finished folder is reused only when the
            config recorded there is equal.
        outputs: files a finished run holds, relative to ``run_dir`` or absolute.
        needs: names of the jobs that must finish first.
        log_name: the log file in ``run_dir`` (stdout and stderr, appended to on every attempt).
        rerun_finished: run even when the folder holds a finished run (``notebook run --force``).
    """

    name: str
    kind: str
    command: tuple[str, ...]
    run_dir: Path
    config: dict[str, Any]
    outputs: tuple[Path, ...] = ()
    needs: tuple[str, ...] = ()
    log_name: str = "job.log"
    rerun_finished: bool = False

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ConfigError(f"job {self.name!r}: kind must be one of {', '.join(JOB_KINDS)}, got {self.kind!r}")
        if not self.command:
            raise ConfigError(f"job {self.name!r} has an empty command")

    @property
    def log_path(self) -> Path:
        return self.run_dir / self.log_name

    def output_paths(self) -> list[Path]:
        return [path if path.is_absolute() else self.run_dir / path for path in self.outputs]

    def outputs_exist(self) -> bool:
        return all(path.is_file() for path in self.output_paths())

    def resumes(self) -> bool:
        """Whether launching now continues a checkpoint (training with one in its folder)."""
        if self.kind != "train":
            return False
        # msadkit train --resume starts from last.ckpt or a later complete iter_*.ckpt; without
        # --resume it refuses a folder holding either, so any of them means resume.
        return last_checkpoint(self.run_dir).is_file() or any((self.run_dir / CHECKPOINT_DIR).glob("iter_*.ckpt"))

    def launch_command(self) -> list[str]:
        """The command to start now: a training job with a checkpoint gets ``--resume``."""
        return [*self.command, "--resume"] if self.resumes() else list(self.command)


def _json_values(value: Any, what: str) -> Any:
    """``value`` as JSON sees it (tuples become lists), so a recorded config compares equal."""
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must hold JSON values (str, number, bool, None, list, dict): {exc}") from None


def _absolute(run_dir: str | os.PathLike) -> Path:
    # absolute(), not resolve(): a folder reached through a symlink keeps the path the caller gave.
    return Path(run_dir).expanduser().absolute()


def _register_config_sections() -> None:
    """Import the registries that add config sections and term options, as ``msadkit train`` has
    them when it resolves its config: the run-length rule writes a term's registered default (a KD
    ramp) into its ``distill.losses`` entry, and the loader checks registered options."""
    import msadkit.distill.registry  # noqa: F401  (registers the distillation terms' options)
    import msadkit.modeling.registry  # noqa: F401  (registers the architectures' sections)


def resolve_training_config(
    config: str | os.PathLike, overrides: Sequence[str], run_dir: str | os.PathLike, iterations: int | None = None
) -> dict[str, Any]:
    """The config ``msadkit train CONFIG OVERRIDES --output-dir RUN_DIR [--iterations N]`` trains.

    The same steps as the command (msadkit/commands/train.py): ``output_dir`` after the overrides,
    then ``--iterations`` rescaling every count of iterations (:func:`run_length_overrides`).

    Raises:
        ConfigError: an unknown key or a wrong type (from the loader), or a bad ``iterations``.
    """
    _register_config_sections()
    overrides = [*overrides, f"output_dir={run_dir}"]
    if iterations is not None:
        overrides += run_length_overrides(load_config(config, overrides), iterations, argument="--iterations")
    return _json_values(load_config(config, overrides), f"config {config}")


def training_job(
    name: str,
    config: str | os.PathLike,
    run_dir: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    iterations: int | None = None,
    needs: Sequence[str] = (),
    evaluate: bool = True,
    log_name: str = "train.log",
) -> Job:
    """A ``msadkit train`` run into ``run_dir``.

    The config is resolved here, so a bad key fails before anything runs. A finished run holds
    ``model_final.pth`` and (when ``evaluate``) ``eval.json``; an interrupted one is resumed.

    Args:
        name: the job's name.
        config: a packaged config name or a YAML file.
        run_dir: the run folder (``--output-dir``).
        overrides: ``key=value`` config overrides.
        iterations: ``--iterations``: the run length, scaling warm-up and LR steps with it.
        needs: jobs to finish first (a student's teacher).
        evaluate: evaluate at the end (else ``--no-eval``).
        log_name: the log file in ``run_dir``.
    """
    run_dir = _absolute(run_dir)
    overrides = [str(item) for item in overrides]
    command = msadkit_command("train", str(config), *overrides, "--output-dir", str(run_dir))
    if iterations is not None:
        command += ["--iterations", str(iterations)]
    if not evaluate:
        command.append("--no-eval")
    outputs = (Path(FINAL_WEIGHTS_NAME), Path(EVAL_NAME)) if evaluate else (Path(FINAL_WEIGHTS_NAME),)
    return Job(
        name, "train", tuple(command), run_dir, resolve_training_config(config, overrides, run_dir, iterations),
        outputs, tuple(needs), log_name,
    )


def _command_line_value(name: str, value: Any) -> str:
    """``value`` written for ``msadkit notebook run -p NAME VALUE``, which reads it back as YAML.

    Raises:
        ConfigError: a value the command line would read back as another value (a text that
            spells a number or ``None`` becomes that number or None there).
    """
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...")  # a plain scalar's document-end marker
    spells_number = isinstance(value, str) and _is_float(value)
    if yaml.safe_load(text) != value or spells_number or (isinstance(value, str) and text == "None"):
        raise ConfigError(f"notebook parameter {name}={value!r} cannot be passed to `msadkit notebook run` unchanged")
    return text


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def notebook_job(
    name: str,
    notebook: str | os.PathLike,
    run_dir: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    *,
    needs: Sequence[str] = (),
    force: bool = False,
    kernel_name: str | None = None,
    execution_timeout: float | None = None,
    log_name: str = "notebook.log",
) -> Job:
    """A ``msadkit notebook run`` execution into ``run_dir``.

    The recorded config is the notebook's name (its file stem for a path) and its parameters, with
    ``output_dir`` set to ``run_dir`` as the notebook runner sets it.

    Args:
        name: the job's name.
        notebook: a notebook name or ``.ipynb`` path.
        run_dir: the run folder (``--out``).
        parameters: values of the notebook's parameters cell (JSON values).
        needs: jobs to finish first.
        force: execute even when the folder holds a finished run (``--force``).
        kernel_name: a Jupyter kernel instead of this interpreter (``--kernel``).
        execution_timeout: seconds one cell may run (``--timeout``).
        log_name: the log file in ``run_dir`` (the cells' output).
    """
    run_dir = _absolute(run_dir)
    parameters = _json_values({**(parameters or {}), "output_dir": str(run_dir)}, f"notebook {notebook} parameters")
    command = msadkit_command("notebook", "run", str(notebook), "--out", str(run_dir))
    for key, value in parameters.items():
        if key != "output_dir":  # the runner sets it from --out
            command += ["-p", key, _command_line_value(key, value)]
    if force:
        command.append("--force")
    if kernel_name is not None:
        command += ["--kernel", kernel_name]
    if execution_timeout is not None:
        command += ["--timeout", str(execution_timeout)]
    label = Path(notebook).stem if str(notebook).endswith(".ipynb") else str(notebook)
    return Job(
        name, "notebook", tuple(command), run_dir, {"notebook": label, "parameters": parameters},
        (Path(NOTEBOOK_RESULTS_NAME),), tuple(needs), log_name, rerun_finished=force,
    )


def command_job(
    name: str,
    command: Sequence[str],
    run_dir: str | os.PathLike,
    *,
    outputs: Sequence[str | os.PathLike] = (),
    needs: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    log_name: str = "job.log",
) -> Job:
    """Any other command (``msadkit pretrain``, ``msadkit pseudo-label``, a script).

    Args:
        name: the job's name.
        command: the command line.
        run_dir: the folder for its ``job.json`` and log (created if needed).
        outputs: files a finished run holds, relative to ``run_dir`` or absolute; the job counts as
            finished only when they exist.
        needs: jobs to finish first.
        config: what the reuse rule compares; by default the command's arguments (without this
            interpreter's path, so another virtual environment runs the same job).
        log_name: the log file in ``run_dir``.
    """
    command = [str(item) for item in command]
    if config is None:
        config = {"command": command[1:] if command[0] == sys.executable else command}
    return Job(
        name, "command", tuple(command), _absolute(run_dir), _json_values(dict(config), f"job {name} config"),
        tuple(Path(path) for path in outputs), tuple(needs), log_name,
    )
