"""Data layer: synthetic dataset, COCO loading, transforms and batching."""

from msadkit.data.batching import DetectionBatch, DetectionCollator, collate_detection
from msadkit.data.coco_dataset import CocoDetectionDataset
from msadkit.data.synthetic import CLASS_NAMES, SyntheticDataset, generate_synthetic_dataset
from msadkit.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    ResizeShortSide,
    build_transforms,
)

__all__ = [
    "CLASS_NAMES",
    "CocoDetectionDataset",
    "Compose",
    "DetectionBatch",
    "DetectionCollator",
    "RandomHorizontalFlip",
    "ResizeShortSide",
    "SyntheticDataset",
    "build_transforms",
    "collate_detection",
    "generate_synthetic_dataset",
]
