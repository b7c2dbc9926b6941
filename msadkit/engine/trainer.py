"""Training and evaluation entry points shared by the command line, the notebooks and the tests."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from msadkit.distill.build import build_distiller
from msadkit.engine.atomic_checkpoint_io import AtomicCheckpointIO
from msadkit.engine.buffer_sync import BroadcastBuffersAtEnd
from msadkit.engine.datasets import build_dataset
from msadkit.engine.metrics_logger import MetricsJsonlLogger
from msadkit.engine.run_evaluation import evaluate_model
from msadkit.engine.semi_supervised import build_train_loader
from msadkit.engine.task import DetectionTask
from msadkit.errors import ConfigError
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import save_atomic
from msadkit.utils.run_folder import (
    CHECKPOINT_DIR,
    FINAL_WEIGHTS_NAME,
    METRICS_NAME,
    last_checkpoint,
    write_run_config,
)

__all__ = ["train", "build_training_model", "export_weights"]

logger = logging.getLogger(__name__)


def _quiet_lightning() -> None:
    """Drop Lightning's advertising and its own internal deprecation notices from run logs."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: "litlogger" not in r.getMessage())
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")


_quiet_lightning()


def _check_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, or None; refuses to overwrite a finished or started run."""
    checkpoint = last_checkpoint(run_dir)
    if resume:
        if not checkpoint.is_file():
            raise ConfigError(f"--resume: no checkpoint to resume from at {checkpoint}")
        return checkpoint
    if checkpoint.is_file() or (run_dir / FINAL_WEIGHTS_NAME).is_file():
        raise ConfigError(
            f"output_dir {run_dir} already holds a run; pass --resume to continue it or choose another output_dir"
        )
    return None


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
    checkpointing = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINT_DIR,
        filename="iter_{step:07d}",
        every_n_train_steps=max(1, trainer_cfg["checkpoint_period"]),
        save_top_k=1,
        monitor=None,
        save_last=True,
    )
    return L.Trainer(
        accelerator=trainer_cfg["accelerator"],
        devices=trainer_cfg["devices"],
        num_nodes=trainer_cfg["num_nodes"],
        strategy=trainer_cfg["strategy"],
        precision=trainer_cfg["precision"],
        max_steps=solver["max_iter"],
        max_epochs=-1,
        gradient_clip_val=solver["clip_grad_norm"] or None,
        callbacks=[BroadcastBuffersAtEnd(), checkpointing, MetricsJsonlLogger(run_dir / METRICS_NAME, trainer_cfg["log_period"]), *callbacks],
        # Versioned log folders: a resumed run adds version_1 instead of overwriting version_0.
        logger=[CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tensorboard")],
        log_every_n_steps=trainer_cfg["log_period"],
        enable_progress_bar=trainer_cfg["progress_bar"],
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
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

    Everything that can be checked (config keys, dataset files, checkpoints named by the config) is
    checked before the run folder is created, so bad input leaves nothing behind. On the first
    process, after training: ``model_final.pth`` (``{"model": state_dict, "config": config}``),
    ``eval.json`` and ``summary.json``.

    Args:
        config: resolved config (``msadkit.config.load_config``).
        resume: continue from ``output_dir/checkpoints/last.ckpt``: weights, optimiser, scheduler and
            iteration counter come from the checkpoint.
        callbacks: extra Lightning callbacks.
        evaluate: evaluate on the validation split at the end.
    """
    run_dir = Path(config["output_dir"]).expanduser()
    resume_from = _check_run_dir(run_dir, resume)
    L.seed_everything(int(config["trainer"]["seed"]), workers=True, verbose=False)
    train_set = build_dataset(config, "train")
    # Plain, or alternating with teacher pseudo-labels when data.pseudo_labels_json is set (SAD).
    train_loader = build_train_loader(config, train_set)
    val_set = build_dataset(config, "val") if evaluate else None
    model = build_training_model(config)
    if config["trainer"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    task = DetectionTask(model, config)
    trainer = _trainer(config, run_dir, callbacks)
    if trainer.is_global_zero:
        write_run_config(run_dir, config)
    trainer.fit(task, train_dataloaders=train_loader, ckpt_path=resume_from)
    if trainer.is_global_zero:
        save_atomic({"model": export_weights(model), "config": config}, run_dir / FINAL_WEIGHTS_NAME)
        if evaluate:
            device = next(model.parameters()).device
            evaluate_model(model, config, run_dir, dataset=val_set, device=device)
    return run_dir
