"""Register the dataset a msadkit config describes in detectron2's ``DatasetCatalog``.

COCO itself needs nothing from here: detectron2's built-in ``coco_2017_train`` / ``coco_2017_val``
read ``datasets/coco/...``, the layout msadkit's COCO configs name. This module serves the other
msadkit sources, above all the embedded synthetic dataset (generated on first use), so that a
detectron2 config can say ``DATASETS.TRAIN: ("msadkit_train",)``.
"""

from __future__ import annotations

from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from msadkit.data.build import resolve_data_paths

__all__ = ["DEFAULT_PREFIX", "register_msadkit_datasets"]

DEFAULT_PREFIX = "msadkit"


def register_msadkit_datasets(config: dict[str, Any], *, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """Register the train and val splits of ``config["data"]`` as COCO-format detectron2 datasets.

    An existing registration under the same name is replaced, so a second config in the same
    process (a test, a notebook) points the names at its own data.

    Args:
        config: resolved msadkit config (``data.dataset`` synthetic or coco).
        prefix: the datasets are called ``<prefix>_train`` and ``<prefix>_val``.

    Returns:
        ``{"train": "<prefix>_train", "val": "<prefix>_val"}``.

    Raises:
        ConfigError / DatasetError: as ``msadkit.data.build.resolve_data_paths``.
    """
    paths = resolve_data_paths(config)
    names = {}
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(paths[f"{split}_json"]), str(paths[f"{split}_images"]))
        names[split] = name
    return names
