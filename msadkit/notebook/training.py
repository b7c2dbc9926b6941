"""Training from a notebook: configs from notebook parameters, reuse/resume and live loss curves.

With more than one device the notebook trains through :func:`msadkit.engine.train.launch.launch_training`
(a child process: DDP cannot start inside a Jupyter kernel); with one device it trains in the
kernel, where a callback can draw the loss curves as they come.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import lightning as L
import yaml

from msadkit.config import dump_config, load_config
from msadkit.config.run_length import override_strings, run_length_overrides
from msadkit.data.build import resolve_data_paths
from msadkit.engine.semi_supervised.pseudo_labels import generate_pseudo_labels
from msadkit.engine.train.launch import launch_training
from msadkit.engine.train.trainer import train
from msadkit.errors import ConfigError
from msadkit.modeling.loading import load_run_model
from msadkit.notebook.live import LiveLossCurves, TrainingStopped
from msadkit.utils.run_folder import FINAL_WEIGHTS_NAME, SUMMARY_NAME, last_checkpoint, read_run_config

__all__ = [
    "notebook_config",
    "override_strings",
    "loss_specs",
    "student_width",
    "distillation_settings",
    "baseline_settings",
    "write_teacher_pseudo_labels",
    "run_state",
    "train_or_reuse",
    "LiveLossCurves",
    "TrainingStopped",
]

_ACCELERATORS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "auto": "auto"}


def notebook_config(
    config: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    output_dir: str | os.PathLike,
    iterations: int | None = None,
    device: str = "cpu",
    devices: int = 1,
    seed: int | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The resolved config of a notebook's training run.

    Args:
        config: packaged config name or YAML path.
        overrides: ``key=value`` strings, applied after the file (and before the arguments below).
        output_dir: the run folder.
        iterations: training length; every count of iterations (warm-up, LR steps, KD ramps,
            periods longer than the run) is scaled with it so that the schedule keeps its shape
            (:func:`msadkit.config.run_length.scaled_run_length`, the rule of
            ``msadkit train --iterations``), and ``schedule`` gets an ``-<iterations>it`` suffix.
            None keeps ``solver.max_iter``.
        device: ``cpu``, ``gpu`` (or ``cuda``) or ``auto``: the trainer's accelerator.
        devices: number of devices (more than one trains in a subprocess, see
            :func:`train_or_reuse`).
        seed: ``trainer.seed``; None keeps the config's.
        extra: nested values set last (e.g. ``{"distill": {"teacher": run_dir}}``), checked like
            overrides.

    Raises:
        ConfigError: unknown device, non-positive iterations or devices, or any config error.
    """
    if device not in _ACCELERATORS:
        raise ConfigError(f"device must be one of {sorted(_ACCELERATORS)}, got {device!r}")
    if int(devices) < 1:
        raise ConfigError(f"devices must be >= 1, got {devices}")
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key=value strings, got the string {overrides!r}")
    texts = list(overrides)
    settings: dict[str, Any] = {
        "output_dir": str(Path(output_dir).expanduser()),
        "trainer": {
            "accelerator": _ACCELERATORS[device],
            "devices": int(devices),
            # A progress bar floods a notebook (and papermill's IOPub channel); LiveLossCurves reports.
            "progress_bar": False,
        },
    }
    if seed is not None:
        settings["trainer"]["seed"] = int(seed)
    texts += override_strings(settings) + override_strings(extra or {})
    if iterations is None:
        return load_config(config, texts)
    # The rule of `msadkit train --iterations`, applied last so that it scales the losses `extra`
    # chose too; the loader labels the schedule of a run whose max_iter differs from its file's.
    return load_config(config, texts + run_length_overrides(load_config(config, texts), int(iterations)))


def loss_specs(losses: Sequence[str | dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """``distill.losses`` entries from a notebook parameter: a type name stands for
    ``{"type": name}`` with the term's default options, a dict is taken as is; None stays None.

    Raises:
        ConfigError: an entry is neither, or the list is empty.
    """
    if losses is None:
        return None
    if isinstance(losses, (str, dict)):
        losses = [losses]
    specs = []
    for index, entry in enumerate(losses):
        if isinstance(entry, str):
            specs.append({"type": entry})
        elif isinstance(entry, dict) and "type" in entry:
            specs.append(dict(entry))
        else:
            raise ConfigError(f"losses[{index}] must be a loss type name or a mapping with a 'type' key, got {entry!r}")
    if not specs:
        raise ConfigError("losses must name at least one distillation loss (or be None to keep the config's)")
    return specs


def student_width(width: float | str | None, teacher_run: str | os.PathLike) -> float | None:
    """The student's backbone width for a notebook ``width`` parameter: a number as is, None for
    the config's, ``"teacher"`` for the teacher run's width (MSAD students match their teacher).

    Raises:
        ConfigError: any other string.
    """
    if width is None or isinstance(width, (int, float)) and not isinstance(width, bool):
        return None if width is None else float(width)
    if width == "teacher":

        return float(read_run_config(teacher_run)["model"]["backbone"]["width"])
    raise ConfigError(f"width must be a number, None or 'teacher', got {width!r}")


def distillation_settings(
    teacher_run: str | os.PathLike,
    *,
    losses: Sequence[str | dict[str, Any]] | None = None,
    method: str | None = None,
    width: float | None = None,
) -> dict[str, Any]:
    """Config values that turn a student config into a distillation run from ``teacher_run``.

    ``method`` labels the run in AP tables; with new ``losses`` and no ``method`` the label is the
    loss types joined by ``+``.
    """
    teacher = str(Path(teacher_run).expanduser().resolve())
    settings: dict[str, Any] = {"role": "student", "distill": {"teacher": teacher}}
    specs = loss_specs(losses)
    if specs is not None:
        settings["distill"]["losses"] = specs
        settings["method"] = method or "+".join(spec["type"] for spec in specs)
    elif method:
        settings["method"] = method
    if width is not None:
        settings["model"] = {"backbone": {"width": float(width)}}
    return settings


def baseline_settings(student_config: dict[str, Any]) -> dict[str, Any]:
    """Config values that make the same student train without a teacher (the baseline it is
    compared with): no teacher, no losses, no initialisation from the teacher, ``role: baseline``
    and the detector's architecture as method label."""
    return {
        "role": "baseline",
        "method": student_config["model"]["arch"],
        "distill": {"teacher": None, "losses": [], "init_student_from_teacher": False},
        "model": {"backbone": {"width": student_config["model"]["backbone"]["width"]}},
        # Pseudo-labels are the teacher's; the baseline trains on the labeled images alone.
        "data": {"pseudo_labels_json": None, "pseudo_labels_images": None},
    }


def write_teacher_pseudo_labels(
    teacher_run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    score_threshold: float = 0.4,
    device: str = "cpu",
) -> dict[str, Any]:
    """Label the unlabeled split of the teacher's synthetic dataset with the teacher (SAD).

    A file that already exists is kept (re-executing a notebook does not relabel).

    Returns:
        ``{"path", "image_root"}`` and, when labels were written now, ``num_images`` and
        ``num_annotations``: set ``data.pseudo_labels_json`` / ``data.pseudo_labels_images`` of the
        student from ``path`` / ``image_root``.

    Raises:
        ConfigError: the teacher's dataset has no unlabeled split.
    """

    model, config = load_run_model(teacher_run, device=device)
    paths = resolve_data_paths(config) if config["data"]["dataset"] == "synthetic" else {}
    if "unlabeled_json" not in paths:
        raise ConfigError(
            f"pseudo-labels need unlabeled images: the teacher {teacher_run} was trained on a dataset without an "
            "unlabeled split (set data.synthetic.num_unlabeled > 0, or write them with `msadkit pseudo-label --images`)"
        )
    out = Path(out)
    if out.is_file():
        return {"path": str(out), "image_root": str(paths["unlabeled_images"])}
    summary = generate_pseudo_labels(
        model, config, paths["unlabeled_json"], out, image_root=paths["unlabeled_images"],
        score_threshold=score_threshold, device=device,
    )
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in summary.items()}


def run_state(run_dir: str | os.PathLike) -> str:
    """``"finished"`` (final weights and summary), ``"interrupted"`` (a resumable checkpoint) or
    ``"new"``."""

    run_dir = Path(run_dir)
    if (run_dir / FINAL_WEIGHTS_NAME).is_file() and (run_dir / SUMMARY_NAME).is_file():
        return "finished"
    if last_checkpoint(run_dir).is_file():
        return "interrupted"
    return "new"


def _same_config(run_dir: Path, config: dict[str, Any]) -> bool:

    return read_run_config(run_dir) == yaml.safe_load(dump_config(config))


def train_or_reuse(
    config: dict[str, Any],
    *,
    callbacks: Iterable[L.Callback] = (),
    evaluate: bool = True,
    echo: Callable[[str], None] = print,
) -> Path:
    """Train ``config`` into its ``output_dir``, or reuse / resume what is already there.

    A finished run made with the same config is reused as is (re-executing a notebook does not
    retrain), an interrupted one resumes from its last checkpoint, and with
    ``trainer.devices > 1`` training runs in a subprocess (:func:`launch_training`). With a
    :class:`LiveLossCurves` among the callbacks, Lightning's banners and warnings stay out of the
    cell output and an interrupt stops after the current iteration.

    Raises:
        ConfigError: the folder holds a run made with a different config.
        TrainingStopped: an interrupt stopped an interactive training (a checkpoint was saved).
    """
    run_dir = Path(config["output_dir"]).expanduser()
    state = run_state(run_dir)
    if state != "new" and not _same_config(run_dir, config):
        raise ConfigError(
            f"{run_dir} already holds a run with a different config; choose another output folder "
            "(or delete that one) to train with these parameters"
        )
    if state == "finished":
        echo(f"{run_dir}: finished run with this config found, reusing it")
        return run_dir
    resume = state == "interrupted"
    if resume:
        echo(f"{run_dir}: resuming from its last checkpoint")
    if int(config["trainer"]["devices"]) > 1:
        return launch_training(config, resume=resume, evaluate=evaluate, echo=echo)
    callbacks = list(callbacks)
    live = next((c for c in callbacks if isinstance(c, LiveLossCurves)), None)
    if live is None:
        return train(config, resume=resume, callbacks=callbacks, evaluate=evaluate)
    # No Lightning banner in the output area (live or batch), and an interrupt stops cleanly after
    # the current iteration.
    with live.attended():
        run_dir = train(config, resume=resume, callbacks=callbacks, evaluate=evaluate)
    if live.shown:
        # The figure on screen gets the final AP, evaluated after its last redraw.
        live.final_figure(run_dir)
    return run_dir
