"""Every config key the kit knows, with its default value.

A config file may set only keys that appear here (or under the free-form ``distill.losses`` list);
an unknown key is an error that names it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["DEFAULTS", "default_config", "FREE_FORM_KEYS", "FCOS_CENTER_SAMPLING_RADIUS"]

# Keys whose values are free-form (lists of dicts, arbitrary mappings) and are not checked
# against DEFAULTS below them.
FREE_FORM_KEYS = ("distill.losses",)

# FCOS's centre-sampling radius in strides (FCOS and MSAD code, docs/methods.md §1.5); the
# detector and the assignment function take their default from here.
FCOS_CENTER_SAMPLING_RADIUS = 1.5

DEFAULTS: dict[str, Any] = {
    # A short label used in AP tables: fcos, retinanet, msad_teacher, msad_student, ...
    "method": "fcos",
    # baseline | teacher | student
    "role": "baseline",
    "schedule": "",
    "model": {
        # fcos | retinanet | msad_teacher. A student is a detector (an MSAD student: fcos with
        # resolution low) whose run sets distill.teacher.
        "arch": "fcos",
        "num_classes": 80,
        "backbone": {
            # slimmable_resnet50 | resnet50 | resnet101
            "name": "slimmable_resnet50",
            "width": 1.0,
            "norm": "BN",
            # Checkpoint to initialise the bottom-up network from (slimmable or torchvision format).
            "weights": None,
            "freeze_at": 0,
        },
        "fpn": {
            "out_channels": 256,
            "norm": "",
            # P6/P7 from C5 ("res5", FCOS/MSAD) or from P5 ("p5", torchvision RetinaNet)
            "top_block": "res5",
        },
        # Which input the detector sees: high (the resized image) or low (its 0.5x copy).
        "resolution": "high",
        # Input convention, applied on the training device to the raw uint8 batch (PixelNormalizer):
        # rgb with ImageNet mean/std (torchvision), or bgr with 103.53/116.28/123.675 and std 1
        # (detectron2 and the original MSAD code). Mean and std are in the model's channel order.
        "pixel_format": "rgb",
        "pixel_mean": [123.675, 116.28, 103.53],
        "pixel_std": [58.395, 57.12, 57.375],
        "fcos": {
            "num_convs": 4,
            "norm": "GN",
            "prior_prob": 0.01,
            "center_sampling_radius": FCOS_CENTER_SAMPLING_RADIUS,
            "focal_alpha": 0.25,
            "focal_gamma": 2.0,
            "score_thresh": 0.05,
            "topk_candidates": 1000,
            "nms_thresh": 0.6,
            "detections_per_image": 100,
            # Added to intersection and union of the GIoU loss on stride-normalised boxes; the
            # MSAD code uses 1 (docs/deviations.md).
            "giou_smoothing": 0.0,
            # Bias on the tower convs: null = only without a norm layer; true = the MSAD/FCOS code
            # (needed to load their weights).
            "tower_conv_bias": None,
            # Post-processing order: clip and drop empty boxes, then NMS and the top detections
            # (true); false = the MSAD code (NMS on unclipped boxes, top detections with ties,
            # then clip and drop empty).
            "clip_before_nms": True,
        },
        "retinanet": {
            "num_convs": 4,
            "norm": "",
            "prior_prob": 0.01,
            "anchor_base_sizes": [32, 64, 128, 256, 512],
            "aspect_ratios": [0.5, 1.0, 2.0],
            "iou_thresholds": [0.4, 0.5],
            "focal_alpha": 0.25,
            "focal_gamma": 2.0,
            "smooth_l1_beta": 0.1,
            "score_thresh": 0.05,
            "topk_candidates": 1000,
            "nms_thresh": 0.5,
            "detections_per_image": 100,
        },
        "msad": {
            # Weight of the fused-branch FCOS loss in the teacher loss.
            "fused_loss_weight": 0.4,
            "fusion_reduction": 16,
            # Which teacher branch inference uses: fused | high | low
            "eval_branch": "fused",
        },
    },
    "data": {
        # synthetic | coco
        "dataset": "synthetic",
        "train_json": None,
        "train_images": None,
        "val_json": None,
        "val_images": None,
        "synthetic": {
            "root": None,
            "num_train": 256,
            "num_val": 64,
            "num_unlabeled": 0,
            "image_size": 256,
            "seed": 0,
        },
        "train_short_sides": [640, 672, 704, 736, 768, 800],
        "train_max_size": 1333,
        "test_short_side": 800,
        "test_max_size": 1333,
        "flip_prob": 0.5,
        "size_divisibility": 32,
        "num_workers": 2,
        # Semi-supervised distillation (ADL/SAD): a COCO json of teacher pseudo-labels
        # (`msadkit pseudo-label`) and its image folder; training then alternates labeled batches
        # with batches drawn from labeled + pseudo-labeled images.
        "pseudo_labels_json": None,
        "pseudo_labels_images": None,
        # A pseudo-label file without a single box (a weak teacher, a high score threshold) stops
        # the run; true trains on it anyway (its batches are then background only).
        "pseudo_labels_allow_empty": False,
        # Decode every image of the training and validation sets once before training starts, and
        # stop with every problem found (missing, truncated or undecodable files, json sizes that
        # differ from the displayed image, boxes outside it), not hours later in a loader worker.
        # Off by default: it reads the whole dataset once (`msadkit data check` does it by hand).
        "check_images": False,
    },
    "solver": {
        # Images per process.
        "batch_size": 16,
        "base_lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "max_iter": 90000,
        "steps": [60000, 80000],
        "gamma": 0.1,
        "warmup_iters": 500,
        "warmup_factor": 0.001,
        # 0 disables clipping.
        "clip_grad_norm": 0.0,
    },
    "trainer": {
        # auto | cpu | gpu
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        # auto | ddp | ddp_spawn ...
        "strategy": "auto",
        # 32-true | bf16-mixed | 16-mixed
        "precision": "32-true",
        "channels_last": False,
        # Wrap the trained model (the student of a distiller, never the frozen teacher) in torch.compile.
        "compile": False,
        "checkpoint_period": 1000,
        # How many periodic checkpoints (checkpoints/iter_step=N.ckpt) to keep, the newest; older
        # ones are removed. checkpoints/last.ckpt, the one --resume starts from, is always kept.
        "keep_checkpoints": 2,
        "log_period": 20,
        "eval_batch_size": 8,
        "seed": 0,
        "progress_bar": True,
        # Stop a diverging run (msadkit.engine.train.training_health): a total loss above `factor` x the
        # median of its first `reference_iters` finite iterations, or a parameter non-finite or
        # larger in magnitude than `max_abs_param` (checked every `param_check_period` iterations
        # and before every checkpoint).
        "divergence": {
            "enabled": True,
            "reference_iters": 20,
            "factor": 100.0,
            "max_abs_param": 1.0e5,
            "param_check_period": 10,
        },
        # Evaluate on the validation split every N iterations (0: only once, after training): rows
        # {"iter", "val/AP", ...} in metrics.jsonl and the loggers, the best weights in model_best.pth.
        "eval_period": 0,
        # COCO evaluator: pycocotools | faster_coco_eval (optional extra msadkit[fast-eval]).
        "eval_backend": "pycocotools",
        # Any of csv, tensorboard, mlflow (extra msadkit[mlflow]), wandb (extra msadkit[wandb]).
        "loggers": ["csv", "tensorboard"],
        # tracking_uri None: $MLFLOW_TRACKING_URI, else the file store "mlruns" beside the run folder.
        "mlflow": {"tracking_uri": None, "experiment": "msadkit"},
        # entity None: the W&B account's default; WANDB_MODE=offline and WANDB_DIR work as usual.
        "wandb": {"project": "msadkit", "entity": None},
    },
    "distill": {
        # Run folder of the teacher (its config.yaml and model_final.pth), or a model_final.pth
        # file (which embeds its config). Setting it turns the run into a distillation run: the
        # model section then describes the student.
        "teacher": None,
        # Initialise the student's backbone, FPN and head from the teacher on a fresh run (MSAD);
        # a resumed run always continues from the student's own checkpoint.
        "init_student_from_teacher": False,
        # A low-resolution student (model.resolution: low, the 0.5x nearest copy of the batch) of a
        # high-resolution teacher: student level l is paired with teacher level l+1 (p2..p6 with
        # p3..p7, docs/methods.md §1.2) for every term; needs data.size_divisibility a multiple of
        # 256. An MSAD teacher's fused levels are always paired that way with a low-res student.
        "cross_resolution": False,
        # List of {"type": msad_feature|adl|gid, "weight": float, ...type-specific options}.
        "losses": [],
    },
    "output_dir": "runs/default",
}


def default_config() -> dict[str, Any]:
    """A deep copy of :data:`DEFAULTS`."""
    return copy.deepcopy(DEFAULTS)
