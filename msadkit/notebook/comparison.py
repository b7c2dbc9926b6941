"""The runs notebook 02 compares, like with like: the distilled student, the same student without a
teacher, and that baseline trained for as many iterations as teacher and student together.

A student initialised from its teacher (MSAD) has had the teacher's iterations before its own; a
baseline of the student's length alone has had fewer. The *step-matched* baseline trains for
``teacher iterations + student iterations`` (its schedule scaled by the rule of ``--iterations``),
so a gain over it is not just more training. With several seeds each model trains once per seed,
in folders ``student``, ``student-seed1``, ... and the figures show mean and spread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from msadkit.analysis.figure_style import finite
from msadkit.errors import ConfigError
from msadkit.notebook.training import baseline_settings, distillation_settings, notebook_config
from msadkit.utils.run_folder import read_run_config, summary_fields

__all__ = [
    "seed_list",
    "seed_folder",
    "matched_iterations",
    "step_matched_config",
    "comparison_configs",
    "low_ap_warning",
    "run_warnings",
    "evaluations_by_model",
    "resolutions_of",
]

# AP (%) below which a detector has barely started to detect.
LOW_AP = 1.0


def seed_list(seed: int | Sequence[int]) -> list[int]:
    """The seeds a notebook's ``seed`` parameter names (a number or a list of numbers).

    Raises:
        ConfigError: an empty list, a repeated seed or a value that is not a whole number.
    """
    seeds = [seed] if isinstance(seed, int) and not isinstance(seed, bool) else list(seed)  # type: ignore[arg-type]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seed must be a whole number or a list of different whole numbers, got {seed!r}")
    return seeds


def seed_folder(out: str | os.PathLike, role: str, seeds: Sequence[int], seed: int) -> Path:
    """``out/<role>`` for the first seed (where notebook 03 looks), ``out/<role>-seed<k>`` for the others."""
    return Path(out) / (role if seed == seeds[0] else f"{role}-seed{seed}")


def matched_iterations(teacher_run: str | os.PathLike, student_config: dict[str, Any]) -> int:
    """Iterations of the step-matched baseline: the teacher run's plus the student's."""
    return int(read_run_config(teacher_run)["solver"]["max_iter"]) + int(student_config["solver"]["max_iter"])


def step_matched_config(
    config: str | os.PathLike,
    overrides: Sequence[str],
    *,
    student_config: dict[str, Any],
    teacher_run: str | os.PathLike,
    output_dir: str | os.PathLike,
    device: str,
    devices: int,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The step-matched baseline: ``config`` with the baseline's values (``extra``; None: the
    student's config without a teacher, :func:`baseline_settings`), trained for
    :func:`matched_iterations`, its schedule scaled like ``--iterations`` (its ``schedule`` label
    says the length, e.g. ``demo-900it``)."""
    return notebook_config(
        config, overrides, output_dir=output_dir, iterations=matched_iterations(teacher_run, student_config),
        device=device, devices=devices, seed=seed,
        extra=baseline_settings(student_config) if extra is None else extra,
    )


def comparison_configs(
    student_config: str | os.PathLike,
    overrides: Sequence[str],
    *,
    teacher_run: str | os.PathLike,
    out: str | os.PathLike,
    seeds: Sequence[int],
    iterations: int | None,
    device: str,
    devices: int,
    losses: Sequence[Any] | None = None,
    method: str | None = None,
    width: float | None = None,
    data: dict[str, Any] | None = None,
    baseline_config: str | os.PathLike | None = None,
    step_matched: bool | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The resolved configs of notebook 02's runs, one per seed each.

    Args:
        student_config: the student's config; its ``distill.teacher`` becomes ``teacher_run``.
        overrides: ``key=value`` overrides of every run.
        teacher_run: the finished teacher run.
        out: the folder holding the runs (:func:`seed_folder` names them).
        seeds: one run of each model per seed.
        iterations: the students' length (None: the config's).
        losses, method, width: see :func:`msadkit.notebook.training.distillation_settings`.
        data: ``data`` values of the distilled student (SAD pseudo-labels).
        baseline_config: another config for the baselines (None: the student's without teacher).
        step_matched: also train the step-matched baseline; None: when the student starts from the
            teacher's weights (``distill.init_student_from_teacher``).

    Returns:
        ``{"student": [...], "baseline": [...], "step_matched": [...]}`` (the last may be empty).
    """
    extra = distillation_settings(teacher_run, losses=losses, method=method, width=width)
    if data:
        extra["data"] = dict(data)
    plan: dict[str, list[dict[str, Any]]] = {"student": [], "baseline": [], "step_matched": []}
    for seed in seeds:
        common = {"device": device, "devices": devices, "seed": seed}
        student = notebook_config(student_config, overrides, output_dir=seed_folder(out, "student", seeds, seed),
                                  iterations=iterations, extra=extra, **common)
        plan["student"].append(student)
        if baseline_config is None:
            source, baseline_extra = student_config, baseline_settings(student)
        else:  # a baseline config of its own is taken as it is, at the student's width
            source = baseline_config
            baseline_extra = {"model": {"backbone": {"width": width}}} if width is not None else {}
        plan["baseline"].append(notebook_config(
            source, overrides, output_dir=seed_folder(out, "baseline", seeds, seed), iterations=iterations,
            extra=baseline_extra, **common))
        wanted = step_matched if step_matched is not None else bool(student["distill"]["init_student_from_teacher"])
        if wanted:
            plan["step_matched"].append(step_matched_config(
                source, overrides, student_config=student, teacher_run=teacher_run,
                output_dir=seed_folder(out, "baseline_matched", seeds, seed), device=device, devices=devices,
                seed=seed, extra=baseline_extra))
    return plan


def low_ap_warning(evaluation: dict[str, Any], *, what: str, iterations: int) -> str | None:
    """One line for a final AP below 1 %: what it means (the model had too few iterations to
    detect much), or None."""
    ap = evaluation.get("AP")
    if finite(ap) and ap >= LOW_AP:
        return None
    shown = f"{ap:.1f}" if finite(ap) else "missing"
    return (f"WARNING: final AP of {what} is {shown} (below {LOW_AP:g}): {iterations} iterations are too few for it "
            "to detect much; train longer (the `iterations` parameter) before reading anything into this AP")


def run_warnings(runs: dict[str, Sequence[str | os.PathLike]]) -> list[str]:
    """:func:`low_ap_warning` of the first run of each model (label -> run folders), for those that
    need one."""
    from msadkit.analysis.run_collection import read_eval

    lines = []
    for label, folders in runs.items():
        if folders:
            iterations = int(read_run_config(folders[0])["solver"]["max_iter"])
            line = low_ap_warning(read_eval(folders[0]), what=label, iterations=iterations)
            lines += [line] if line else []
    return lines


def evaluations_by_model(runs: dict[str, Sequence[str | os.PathLike]]) -> dict[str, list[dict[str, Any]]]:
    """Model label -> the ``eval.json`` of each of its run folders (one per seed)."""
    from msadkit.analysis.run_collection import read_eval

    return {label: [read_eval(folder) for folder in folders] for label, folders in runs.items() if folders}


def resolutions_of(runs: dict[str, Sequence[str | os.PathLike]]) -> dict[str, str]:
    """Model label -> the input resolution of its first run (``high``, ``low``, ``high+low``)."""
    found = {}
    for label, folders in runs.items():
        if folders:
            resolution = summary_fields(read_run_config(folders[0]))["resolution"]
            if resolution:
                found[label] = str(resolution)
    return found
