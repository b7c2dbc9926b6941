"""The experiment loggers of a run (``trainer.loggers``): CSV, TensorBoard, MLflow, Weights & Biases.

Each name maps to Lightning's own logger class. ``csv`` and ``tensorboard`` write into the run
folder (``logs/`` and ``tensorboard/``, a new ``version_N`` per resumed run); ``mlflow`` and
``wandb`` are optional extras, imported only when listed. Every logger receives the training
losses (``train/...`` every ``trainer.log_period`` iterations), the validation metrics
(``val/AP`` ... every ``trainer.eval_period``) and, once at the start, the resolved config as
flat dotted parameters (``solver.base_lr``), through :class:`ConfigToLoggers`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger

from msadkit.errors import ConfigError, MsadkitError

__all__ = ["KNOWN_LOGGERS", "check_loggers", "build_loggers", "flatten_config", "ConfigToLoggers"]

# Logger name -> (module Lightning needs, pip extra that installs it); None: always installed.
KNOWN_LOGGERS: dict[str, tuple[str, str] | None] = {
    "csv": None,
    "tensorboard": None,
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


def check_loggers(config: dict[str, Any]) -> list[str]:
    """The logger names of ``trainer.loggers``, checked: known, not repeated, their package importable.

    Raises:
        ConfigError: an unknown or repeated name (the known names are listed).
        MsadkitError: a listed logger whose package is missing (names the extra to install).
    """
    names = config["trainer"]["loggers"]
    for name in names:
        if name not in KNOWN_LOGGERS:
            raise ConfigError(
                f"trainer.loggers: unknown logger {name!r}; the known loggers are {', '.join(KNOWN_LOGGERS)}"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"trainer.loggers: {', '.join(repeated)} listed more than once")
    for name in names:
        requirement = KNOWN_LOGGERS[name]
        if requirement is None:
            continue
        module, extra = requirement
        try:
            importlib.import_module(module)
        except ImportError:
            raise MsadkitError(
                f"trainer.loggers: the {name} logger needs the optional package {module}; "
                f"install it with `pip install msadkit[{extra}]`"
            ) from None
    return list(names)


def build_loggers(config: dict[str, Any], run_dir: str | Path) -> list[Logger]:
    """The Lightning loggers named by ``trainer.loggers``, in that order (see :func:`check_loggers`).

    The run's name in MLflow and W&B is the run folder's name. Building a logger writes nothing;
    each starts its files (or its MLflow/W&B run) when the first value is logged.
    """
    run_dir = Path(run_dir)
    loggers: list[Logger] = []
    for name in check_loggers(config):
        if name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            loggers.append(CSVLogger(run_dir, name="logs"))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            # No "hp_metric" placeholder series next to the real metrics.
            loggers.append(TensorBoardLogger(run_dir, name="tensorboard", default_hp_metric=False))
        elif name == "mlflow":
            loggers.append(_mlflow_logger(config["trainer"]["mlflow"], run_dir))
        else:
            loggers.append(_wandb_logger(config["trainer"]["wandb"], run_dir))
    return loggers


def _mlflow_logger(options: dict[str, Any], run_dir: Path) -> Logger:
    from lightning.pytorch.loggers import MLFlowLogger

    uri = options["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        # One store for all runs beside this one, so MLflow compares them side by side.
        uri = (run_dir.resolve().parent / "mlruns").as_uri()
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 refuses a file store unless this is set; a file store in the config is the opt-in.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name=options["experiment"], run_name=run_dir.name, tracking_uri=uri)


def _wandb_logger(options: dict[str, Any], run_dir: Path) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    # The run's files go into the run folder unless WANDB_DIR says otherwise.
    save_dir = os.environ.get("WANDB_DIR") or str(run_dir)
    return WandbLogger(project=options["project"], entity=options["entity"], name=run_dir.name, save_dir=save_dir)


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"solver": {"base_lr": 0.01}}`` -> ``{"solver.base_lr": 0.01}`` (the override syntax).

    Lists stay values (``data.train_short_sides: [64]``); the loggers print them.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


class ConfigToLoggers(L.Callback):
    """Sends the resolved config to every logger when fitting starts; ends W&B's run when it stops.

    W&B keeps one run per process open until it is finished: without ending it, a second
    training in the same process (a notebook) would log into the first one's run.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.params = flatten_config(config)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for run_logger in trainer.loggers:
            run_logger.log_hyperparams(self.params)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning's module imports wandb only when a WandbLogger is built.
        from lightning.pytorch.loggers import WandbLogger

        for run_logger in trainer.loggers:
            # _experiment: the run, None when nothing was ever logged (no run to end).
            run = getattr(run_logger, "_experiment", None) if isinstance(run_logger, WandbLogger) else None
            if run is not None and trainer.is_global_zero:
                run.finish()
