"""Train and evaluate msadkit models with detectron2's trainer, data loaders, evaluator and ``launch``.

Usage (``--config-file`` takes a path or a packaged name)::

    python -m msadkit.integrations.detectron2.train_net --config-file MSAD-Teacher-W025 --num-gpus 8
    python -m msadkit.integrations.detectron2.train_net --config-file MSAD-Teacher-W025 --eval-only \\
        MODEL.WEIGHTS runs/detectron2/msad_teacher_w025/model_final.pth

Besides detectron2's ``model_final.pth``, a finished training writes ``OUTPUT_DIR/msadkit/``: the
same weights as a msadkit run folder (``config.yaml``, ``model_final.pth``), which ``msadkit
evaluate`` scores and which a student names as its ``distill.teacher``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

import msadkit.integrations.detectron2  # noqa: F401  (registers MsadkitDetector and the backbone)
from msadkit.errors import ConfigError
from msadkit.integrations.detectron2.checkpoint_convert import TRAINING_ONLY_PREFIX, export_msadkit_run
from msadkit.integrations.detectron2.checkpointer import StrictDetectionCheckpointer
from msadkit.integrations.detectron2.config import (
    add_msadkit_config,
    msadkit_config_from_cfg,
    resolve_detectron2_config,
)
from msadkit.integrations.detectron2.datasets import register_msadkit_datasets
from msadkit.integrations.detectron2.meta_arch import MsadkitDetector

__all__ = ["MSADKIT_RUN_NAME", "Trainer", "setup", "check_num_classes", "main"]

# Sub-folder of OUTPUT_DIR holding the final weights as a msadkit run folder.
MSADKIT_RUN_NAME = "msadkit"

# Under "detectron2" so that the handlers detectron2's setup_logger installs show it.
logger = logging.getLogger("detectron2").getChild("msadkit")


class Trainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` with COCO box evaluation and strict checkpoint loading."""

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> COCOEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        # msadkit models predict boxes only.
        return COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=output_folder)

    def build_hooks(self) -> list[Any]:
        # Swapped in before the hooks capture it: resuming or loading MODEL.WEIGHTS must not go on
        # with keys missing (detectron2 would only log them).
        self.checkpointer = StrictDetectionCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        return super().build_hooks()


def check_num_classes(cfg: CfgNode, num_classes: int) -> None:
    """Raise when a dataset of ``cfg`` has a different number of classes than the model.

    Checked where the metadata already lists the classes (detectron2's built-in datasets such as
    ``coco_2017_train``); a COCO json registered by path lists them only once it is loaded.

    Raises:
        ConfigError: naming the dataset, its class count and ``model.num_classes``.
    """
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != num_classes:
            raise ConfigError(
                f"dataset {name} has {len(classes)} classes but the msadkit model has model.num_classes={num_classes}; "
                "set it in MSADKIT.OVERRIDES"
            )


def setup(args: Any) -> CfgNode:
    """The detectron2 config of ``args`` (with the ``MSADKIT`` section) and the datasets it needs.

    The msadkit config's own data source is registered as ``msadkit_train`` / ``msadkit_val``, so
    ``DATASETS.TRAIN: ("msadkit_train",)`` trains on it (for example the synthetic dataset).
    """
    cfg = add_msadkit_config(get_cfg())
    if args.config_file:
        args.config_file = str(resolve_detectron2_config(args.config_file))
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    config = msadkit_config_from_cfg(cfg)
    if any(name.startswith("msadkit_") for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)):
        register_msadkit_datasets(config)
    check_num_classes(cfg, config["model"]["num_classes"])
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args: Any) -> Any:
    """Train (optionally resuming) or, with ``--eval-only``, evaluate ``MODEL.WEIGHTS``."""
    cfg = setup(args)
    if args.eval_only:
        if cfg.MODEL.META_ARCHITECTURE == "MsadkitDetector":
            # Only the deployable model: a student is evaluated without loading its teacher.
            model = MsadkitDetector(cfg, for_inference=True).to(cfg.MODEL.DEVICE)
        else:
            model = Trainer.build_model(cfg)
        StrictDetectionCheckpointer(model, cfg.OUTPUT_DIR, ignored_prefixes=(TRAINING_ONLY_PREFIX,)).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    if comm.is_main_process() and isinstance(model, MsadkitDetector):
        run_dir = export_msadkit_run(model, Path(cfg.OUTPUT_DIR) / MSADKIT_RUN_NAME)
        logger.info("msadkit run folder (config.yaml, model_final.pth) written to %s", run_dir)
    return results


if __name__ == "__main__":
    arguments = default_argument_parser().parse_args()
    launch(
        main,
        arguments.num_gpus,
        num_machines=arguments.num_machines,
        machine_rank=arguments.machine_rank,
        dist_url=arguments.dist_url,
        args=(arguments,),
    )
