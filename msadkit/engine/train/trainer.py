"""Training and evaluation entry points shared by the command line, the notebooks and the tests."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from torch import nn

from msadkit.data.build import build_dataset, build_loader
from msadkit.data.image_check import check_config_images
from msadkit.distill.build import build_distiller
from msadkit.engine.evaluation.coco_evaluation import format_ap_table
from msadkit.engine.evaluation.run_evaluation import evaluate_model
from msadkit.engine.semi_supervised.sad_loader import build_train_loader
from msadkit.engine.train.atomic_checkpoint_io import AtomicCheckpointIO
from msadkit.engine.train.buffer_sync import BroadcastBuffersAtEnd
from msadkit.engine.train.checkpointing import IterationCheckpoint, check_keep_checkpoints
from msadkit.engine.train.compile import compile_trained_model
from msadkit.engine.train.exact_resume import ExactResume
from msadkit.engine.train.graceful_stop import shield_loader_workers
from msadkit.engine.train.loggers import ConfigToLoggers, build_loggers
from msadkit.engine.train.metrics_logger import MetricsJsonlLogger
from msadkit.engine.train.progress import IterationProgressBar
from msadkit.engine.train.resume_check import check_resume_fits
from msadkit.engine.train.task import DetectionTask
from msadkit.engine.train.training_health import health_callbacks
from msadkit.engine.train.validation import PeriodicValidation, check_validation_config, validation_schedule
from msadkit.errors import ConfigError
from msadkit.modeling.registry import build_model
from msadkit.utils.atomic import disk_full_error, remove_stale_temporaries
from msadkit.utils.checkpoint import checkpoint_step, save_atomic
from msadkit.utils.run_folder import (
    CHECKPOINT_DIR,
    FINAL_WEIGHTS_NAME,
    METRICS_NAME,
    last_checkpoint,
    write_run_config,
)
from msadkit.utils.run_lock import RunLock, check_writable_folder

__all__ = ["train", "build_training_model", "export_weights"]

logger = logging.getLogger(__name__)


def _quiet_lightning() -> None:
    """Drop Lightning's advertising from run logs (once, at import)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())


def _ignore_lightning_warnings() -> None:
    """Ignore the Lightning warnings that do not apply to msadkit's runs.

    Set again by every :func:`train` call (adding a filter twice keeps one), so that they hold
    inside a caller's ``warnings.catch_warnings()`` too (pytest, a notebook cell).
    """
    # Lightning's own internal deprecation notice.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    # The task always has a validation_step; it runs only with trainer.eval_period > 0.
    warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`")
    # The loggers get the training losses from MetricsJsonlLogger every trainer.log_period
    # iterations, across epochs; Lightning's interval only paces its flushes, so an epoch shorter
    # than the period loses nothing.
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval")
    # Checkpoints written before IterationCheckpoint hold the state of Lightning's ModelCheckpoint,
    # which msadkit no longer uses; they resume all the same.
    warnings.filterwarnings(
        "ignore", message=r".*callbacks used to create the checkpoint need to be provided.*\[\"ModelCheckpoint\{"
    )


_quiet_lightning()
_ignore_lightning_warnings()


def _resume_point(run_dir: Path) -> tuple[Path | None, int | None]:
    """The newest complete checkpoint of a run folder and its step, or ``(None, None)``.

    ``last.ckpt``, or an ``iter_*.ckpt`` of a later step when the process was killed between the
    two writes (or during the first ``last.ckpt``); files torch cannot read are passed over.
    """
    last = last_checkpoint(run_dir)
    candidates = [last] + sorted(last.parent.glob("iter_*.ckpt")) if last.parent.is_dir() else []
    best: tuple[Path | None, int | None] = (None, None)
    for path in candidates:
        if not path.is_file():
            continue
        step = checkpoint_step(path)
        if step is None:
            logger.warning("checkpoint %s cannot be read (cut short?); it is not resumed from", path)
        elif best[1] is None or step > best[1]:
            best = (path, step)
    return best


def _check_run_dir(run_dir: Path, resume: bool) -> tuple[Path | None, int | None]:
    """The checkpoint to resume from and its step, or Nones; refuses to overwrite a started run."""
    checkpoint, step = _resume_point(run_dir)
    if resume:
        if checkpoint is None:
            raise ConfigError(
                f"--resume: no checkpoint to resume from at {last_checkpoint(run_dir)} "
                "(nor a complete iter_*.ckpt beside it)"
            )
        if checkpoint != last_checkpoint(run_dir):
            logger.info("resuming from %s (iteration %d)", checkpoint, step)
        return checkpoint, step
    if checkpoint is not None or (run_dir / FINAL_WEIGHTS_NAME).is_file():
        raise ConfigError(
            f"output_dir {run_dir} already holds a run; pass --resume to continue it or choose another output_dir"
        )
    return None, None


def build_training_model(config: dict[str, Any]) -> nn.Module:
    """The model a run trains: the detector of ``model.arch``, wrapped in a :class:`Distiller` with
    its frozen teacher and loss terms when ``distill.teacher`` is set."""
    model = build_model(config)
    if config["distill"]["teacher"]:
        return build_distiller(config, student=model)
    return model


def export_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that go into ``model_final.pth``: the deployable model only.

    A distiller exposes ``export_state_dict()`` (the student alone, loadable as a plain detector);
    any other model is saved whole.
    """
    exporter = getattr(model, "export_state_dict", None)
    return exporter() if callable(exporter) else model.state_dict()


def _trainer(config: dict[str, Any], run_dir: Path, callbacks: Iterable[L.Callback]) -> L.Trainer:
    trainer_cfg = config["trainer"]
    solver = config["solver"]
    health = health_callbacks(config)
    # Periodic checkpoints, the newest trainer.keep_checkpoints kept; SIGTERM/SIGINT stop with one.
    checkpointing = IterationCheckpoint(
        run_dir / CHECKPOINT_DIR,
        period=trainer_cfg["checkpoint_period"],
        keep=check_keep_checkpoints(config),
        eval_period=trainer_cfg["eval_period"],
    )
    # One bar over the iterations instead of Lightning's per-epoch "Epoch 19/-2".
    progress = [IterationProgressBar()] if trainer_cfg["progress_bar"] else []
    return L.Trainer(
        accelerator=trainer_cfg["accelerator"],
        devices=trainer_cfg["devices"],
        num_nodes=trainer_cfg["num_nodes"],
        strategy=trainer_cfg["strategy"],
        precision=trainer_cfg["precision"],
        max_steps=solver["max_iter"],
        max_epochs=-1,
        gradient_clip_val=solver["clip_grad_norm"] or None,
        callbacks=[
            BroadcastBuffersAtEnd(),
            ExactResume(),
            *health,
            checkpointing,
            ConfigToLoggers(config),
            *progress,
            *callbacks,
        ],
        # trainer.loggers; csv and tensorboard add version_1 for a resumed run instead of overwriting.
        logger=build_loggers(config, run_dir),
        log_every_n_steps=trainer_cfg["log_period"],
        enable_progress_bar=trainer_cfg["progress_bar"],
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # Validation every trainer.eval_period iterations, or never inside fit.
        **validation_schedule(trainer_cfg),
        # no_grad rather than inference_mode: a tensor a model caches while validating stays usable
        # when training resumes.
        inference_mode=False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,
        deterministic=False,
    )


def train(
    config: dict[str, Any],
    *,
    resume: bool = False,
    callbacks: Iterable[L.Callback] = (),
    evaluate: bool = True,
) -> Path:
    """Train the configured model; write the run folder; return its path.

    Everything that can be checked (an output_dir that cannot be written, config keys, dataset
    files and their classes, checkpoints named by the config) is checked before anything is written
    but the run folder's lock; bad input then leaves no run folder behind. The first process holds
    the lock (``msadkit.utils.run_lock``) for the whole call, so a second process training into
    the same folder is refused at once. It removes the temporary files that writers killed
    mid-checkpoint left, starts ``metrics.jsonl`` afresh (or, resuming, keeps its records up to
    the checkpoint's iteration) and writes ``config.yaml``; after training, ``model_final.pth``
    (``{"model": state_dict, "config": config}``), ``eval.json`` and ``summary.json``. With
    ``trainer.eval_period`` the validation split is also scored during training
    (``msadkit.engine.train.validation``: ``val/...`` rows in ``metrics.jsonl``, ``model_best.pth``).

    Args:
        config: resolved config (``msadkit.config.load_config``).
        resume: continue from the newest complete checkpoint of ``output_dir/checkpoints``
            (``last.ckpt``, or a later readable ``iter_*.ckpt``): weights, optimiser, scheduler and
            iteration counter come from the checkpoint.
        callbacks: extra Lightning callbacks.
        evaluate: evaluate on the validation split at the end.

    Raises:
        TrainingInterrupted: SIGTERM or SIGINT stopped training; the checkpoints of the iteration
            it stopped after were written (``msadkit.engine.train.graceful_stop``).
        DiskFullError: a checkpoint, a metrics row or a result file did not fit on the disk; no
            file is left half-written.
    """
    run_dir = Path(config["output_dir"]).expanduser()
    _ignore_lightning_warnings()
    # Before anything is built: a path that cannot be written is one line, not a traceback later.
    check_writable_folder(run_dir)
    check_validation_config(config)
    # data.check_images (opt-in): every image decoded once, every problem in one error, before the
    # run folder (or its lock) is written.
    check_config_images(config)
    L.seed_everything(int(config["trainer"]["seed"]), workers=True, verbose=False)
    metrics = MetricsJsonlLogger(run_dir / METRICS_NAME, config["trainer"]["log_period"])
    # The Trainer writes nothing when built, and knows this process's rank (DDP, several nodes).
    periodic = config["trainer"]["eval_period"] > 0
    validation = [PeriodicValidation(config, run_dir, run_dir / METRICS_NAME, export_weights)] if periodic else []
    trainer = _trainer(config, run_dir, [metrics, *validation, *callbacks])
    # Rank 0 alone trains into the folder and holds its lock; the other ranks write nothing there.
    lock = RunLock(run_dir).acquire() if trainer.is_global_zero else None
    try:
        if trainer.is_global_zero:
            # Under the lock no other process writes there: temporaries are from killed writers.
            remove_stale_temporaries(run_dir / CHECKPOINT_DIR)
        resume_from, resume_step = _check_run_dir(run_dir, resume)
        train_set = build_dataset(config, "train")
        # Plain, or alternating with teacher pseudo-labels when data.pseudo_labels_json is set (SAD).
        train_loader = build_train_loader(config, train_set)
        val_set = build_dataset(config, "val") if evaluate or periodic else None
        val_loader = build_loader(config, val_set, train=False) if periodic else None
        for loader in (train_loader, val_loader):
            # A signal to the process group must stop training with a checkpoint, not kill a worker.
            shield_loader_workers(loader, trainer.global_rank)
        model = build_training_model(config)
        if config["trainer"]["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        if config["trainer"]["compile"]:
            # In place: module names, checkpoints and the final weights stay those of eager.
            on_gpu = config["trainer"]["accelerator"] != "cpu" and torch.cuda.is_available()
            compile_trained_model(model, device_type="cuda" if on_gpu else "cpu")
        task = DetectionTask(model, config)
        if resume_from is not None:
            # Before metrics.jsonl or config.yaml are touched: a config that builds another model
            # leaves the finished run as it was.
            check_resume_fits(resume_from, task, run_dir, config)
        if trainer.is_global_zero:
            metrics.start(resume_step)
            write_run_config(run_dir, config)
        trainer.fit(task, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume_from)
        if trainer.is_global_zero:
            save_atomic({"model": export_weights(model), "config": config}, run_dir / FINAL_WEIGHTS_NAME)
            if evaluate:
                device = next(model.parameters()).device
                ap = evaluate_model(model, config, run_dir, dataset=val_set, device=device)
                logger.info("evaluation\n%s", format_ap_table(ap))
    except Exception as exc:
        # A full disk met by a writer outside msadkit's own (Lightning's loggers) is the same
        # one-line error as a checkpoint that does not fit.
        full = disk_full_error(exc, default=run_dir)
        if full is None:
            raise
        raise full from exc
    finally:
        if lock is not None:
            # Also removes the run folder if this call created it and wrote nothing into it.
            lock.release()
    return run_dir
