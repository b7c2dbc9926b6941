"""Datasets and data loaders from the ``data`` section of a config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from msadkit.data import CocoDetectionDataset, DetectionCollator, build_transforms, generate_synthetic_dataset
from msadkit.errors import ConfigError

__all__ = ["cache_dir", "synthetic_root", "resolve_data_paths", "build_dataset", "check_num_classes", "build_loader"]


def cache_dir() -> Path:
    """``$MSADKIT_CACHE`` or ``~/.cache/msadkit``: where generated datasets live."""
    return Path(os.environ.get("MSADKIT_CACHE", Path.home() / ".cache" / "msadkit")).expanduser()


def synthetic_root(synthetic_cfg: dict[str, Any]) -> Path:
    """The folder of the synthetic dataset these parameters describe."""
    if synthetic_cfg["root"]:
        return Path(synthetic_cfg["root"]).expanduser()
    name = (
        f"synthetic-s{synthetic_cfg['seed']}-n{synthetic_cfg['num_train']}-{synthetic_cfg['num_val']}"
        f"-{synthetic_cfg['num_unlabeled']}-px{synthetic_cfg['image_size']}"
    )
    return cache_dir() / name


def resolve_data_paths(config: dict[str, Any]) -> dict[str, Path]:
    """Annotation json and image folder of each split, generating the synthetic dataset if needed.

    Returns:
        ``{"train_json", "train_images", "val_json", "val_images"}`` (and ``"unlabeled_json"``,
        ``"unlabeled_images"`` for a synthetic dataset with unlabeled images).
    """
    data = config["data"]
    if data["dataset"] == "synthetic":
        synth = data["synthetic"]
        dataset = generate_synthetic_dataset(
            synthetic_root(synth),
            num_train=synth["num_train"],
            num_val=synth["num_val"],
            num_unlabeled=synth["num_unlabeled"],
            image_size=synth["image_size"],
            seed=synth["seed"],
        )
        paths = {
            "train_json": dataset.train_json,
            "train_images": dataset.image_root("train"),
            "val_json": dataset.val_json,
            "val_images": dataset.image_root("val"),
        }
        if dataset.unlabeled_json is not None:
            paths["unlabeled_json"] = dataset.unlabeled_json
            paths["unlabeled_images"] = dataset.image_root("unlabeled")
        return paths
    if data["dataset"] == "coco":
        paths = {}
        for key in ("train_json", "train_images", "val_json", "val_images"):
            if not data[key]:
                raise ConfigError(f"data.{key} must be set when data.dataset is 'coco'")
            paths[key] = Path(data[key]).expanduser()
        return paths
    raise ConfigError(f"data.dataset must be 'synthetic' or 'coco', got {data['dataset']!r}")


def build_dataset(config: dict[str, Any], split: str, *, train: bool | None = None) -> CocoDetectionDataset:
    """The dataset of ``split`` ("train" or "val") with the train or test transforms."""
    data = config["data"]
    paths = resolve_data_paths(config)
    train = (split == "train") if train is None else train
    if train:
        transform = build_transforms(
            train=True,
            short_sides=data["train_short_sides"],
            max_size=data["train_max_size"],
            flip_prob=data["flip_prob"],
        )
    else:
        transform = build_transforms(
            train=False,
            short_sides=[data["test_short_side"]],
            max_size=data["test_max_size"],
        )
    dataset = CocoDetectionDataset(paths[f"{split}_json"], paths[f"{split}_images"], transform=transform)
    check_num_classes(config, dataset)
    return dataset


def check_num_classes(config: dict[str, Any], dataset: CocoDetectionDataset) -> None:
    """Raise :class:`ConfigError` unless ``model.num_classes`` is the dataset's number of categories.

    The model's label ``i`` is the dataset's ``i``-th category, so any other count trains (or
    evaluates) a head that cannot name some categories, or names ones that do not exist.
    """
    expected = int(config["model"]["num_classes"])
    if dataset.num_classes != expected:
        raise ConfigError(
            f"model.num_classes is {expected} but {dataset.coco_json_path} has {dataset.num_classes} categories "
            f"({_first_names(dataset.class_names)}); set model.num_classes={dataset.num_classes} "
            "or use annotations with that many categories"
        )


def _first_names(names: list[str], limit: int = 100) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def build_loader(
    config: dict[str, Any], dataset: torch.utils.data.Dataset, *, train: bool, batch_size: int | None = None
) -> DataLoader:
    """A data loader that pads batches to ``data.size_divisibility``.

    Training loaders shuffle with a generator seeded from ``trainer.seed`` and drop the last
    incomplete batch; under DDP Lightning replaces the sampler with a distributed one.
    """
    data = config["data"]
    workers = int(data["num_workers"])
    if batch_size is None:
        batch_size = config["solver"]["batch_size"] if train else config["trainer"]["eval_batch_size"]
    generator = torch.Generator().manual_seed(int(config["trainer"]["seed"]))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train and len(dataset) >= batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=DetectionCollator(data["size_divisibility"]),
        generator=generator if train else None,
    )
