"""Training and evaluation entry points shared by the command line, the notebooks and the tests."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from msadkit.config.loader import merge_into_config
from msadkit.engine.atomic_checkpoint_io import AtomicCheckpointIO
from msadkit.engine.buffer_sync import BroadcastBuffersAtEnd
from msadkit.utils.checkpoint import load_checkpoint_file, load_state_dict_strict, save_atomic
from msadkit.engine.datasets import build_dataset, build_loader
from msadkit.engine.evaluation import coco_evaluate, format_ap_table
from msadkit.engine.inference import predict_coco_results
from msadkit.engine.metrics_logger import MetricsJsonlLogger
from msadkit.engine.run_folder import (
    CHECKPOINT_DIR,
    EVAL_NAME,
    FINAL_WEIGHTS_NAME,
    METRICS_NAME,
    SUMMARY_NAME,
    last_checkpoint,
    read_run_config,
    write_json_atomic,
    write_run_config,
)
from msadkit.engine.semi_supervised import build_train_loader
from msadkit.engine.task import DetectionTask
from msadkit.errors import CheckpointError, ConfigError
from msadkit.modeling.build import build_model

__all__ = ["train", "evaluate_model", "evaluate_run", "load_model_weights", "run_summary", "export_weights"]

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
    model = build_model(config)
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


def load_model_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Strictly load ``model_final.pth`` (``{"model": ...}``) or a Lightning ``.ckpt`` into ``model``."""
    data = load_checkpoint_file(path)
    if "model" in data:
        state = data["model"]
    elif "state_dict" in data:
        # Lightning checkpoints prefix the task's attribute name.
        state = {k[len("model."):]: v for k, v in data["state_dict"].items() if k.startswith("model.")}
    else:
        raise CheckpointError(f"checkpoint {path} has neither a 'model' nor a 'state_dict' entry")
    load_state_dict_strict(model, state, str(path))


def run_summary(config: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """The row of the AP table that describes this run."""
    model_cfg = config["model"]
    backbone = model_cfg["backbone"]
    width = backbone["width"] if backbone["name"] == "slimmable_resnet50" else 1.0
    resolution = "high+low" if model_cfg["arch"] == "msad_teacher" else model_cfg["resolution"]
    capacity = None
    if backbone["name"] == "slimmable_resnet50":
        from msadkit.analysis.flops import msad_capacity

        role = {"high+low": "teacher", "low": "low"}.get(resolution, "high")
        capacity = round(msad_capacity(width, role), 3)
    return {
        "method": config["method"],
        "backbone": backbone["name"],
        "width": width,
        "role": config["role"],
        "resolution": resolution,
        "schedule": config["schedule"] or f"{config['solver']['max_iter']}it",
        "capacity": capacity,
        "eval": metrics,
    }


def evaluate_model(
    model: nn.Module,
    config: dict[str, Any],
    run_dir: str | os.PathLike | None = None,
    *,
    dataset: torch.utils.data.Dataset | None = None,
    device: torch.device | str = "cpu",
    name: str = EVAL_NAME,
) -> dict[str, float]:
    """COCO AP of ``model`` on the validation split; written to ``run_dir/eval.json`` if given."""
    dataset = dataset if dataset is not None else build_dataset(config, "val")
    loader = build_loader(config, dataset, train=False)
    results = predict_coco_results(
        model,
        loader,
        dataset.category_ids,
        device=device,
        precision=config["trainer"]["precision"],
        channels_last=config["trainer"]["channels_last"],
    )
    metrics = coco_evaluate(dataset.coco_json_path, results)
    logger.info("evaluation\n%s", format_ap_table(metrics))
    if run_dir is not None:
        run_dir = Path(run_dir)
        write_json_atomic(run_dir / name, metrics)
        if name == EVAL_NAME:
            write_json_atomic(run_dir / SUMMARY_NAME, run_summary(config, metrics))
    return metrics


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    write: bool = True,
    name: str = EVAL_NAME,
) -> dict[str, float]:
    """Evaluate a run folder's final weights (or ``weights``) on its validation split.

    Args:
        run_dir: folder written by :func:`train`.
        weights: another checkpoint to evaluate instead of ``model_final.pth``.
        overrides: nested config values to change for the evaluation (checked like config keys),
            e.g. ``{"model": {"msad": {"eval_branch": "high"}}}``.
        device: where to run.
        write: write ``run_dir/<name>`` (and ``summary.json`` when ``name`` is ``eval.json``).
        name: file name of the metrics, so another branch or checkpoint does not replace eval.json.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    merge_into_config(config, overrides or {}, "evaluate overrides")
    weights = Path(weights) if weights else run_dir / FINAL_WEIGHTS_NAME
    dataset = build_dataset(config, "val")
    model = build_model(config, for_inference=True)
    load_model_weights(model, weights)
    model.to(device)
    return evaluate_model(model, config, run_dir if write else None, dataset=dataset, device=device, name=name)
