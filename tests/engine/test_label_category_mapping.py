"""A run's label -> COCO category mapping has one source, its training json, checked at evaluation."""

from __future__ import annotations

import json
import shutil

import pytest

from msadkit.config import load_config
from msadkit.data import CocoDetectionDataset
from msadkit.data.build import build_dataset, resolve_data_paths
from msadkit.engine.inference.detect import evaluation_category_ids, run_categories
from msadkit.errors import ConfigError


def _coco_config(tmp_path, tiny_overrides, mutate_val):
    synthetic = load_config("fcos_demo", tiny_overrides(tmp_path / "run"))
    paths = resolve_data_paths(synthetic)
    val = json.loads(paths["val_json"].read_text())
    mutate_val(val)
    val_json = tmp_path / "val.json"
    val_json.write_text(json.dumps(val))
    shutil.copytree(paths["val_images"], tmp_path / "val_images")
    overrides = tiny_overrides(tmp_path / "run") + [
        "data.dataset=coco",
        f"data.train_json={paths['train_json']}",
        f"data.train_images={paths['train_images']}",
        f"data.val_json={val_json}",
        f"data.val_images={tmp_path / 'val_images'}",
    ]
    return load_config("fcos_demo", overrides), val_json


def test_the_training_jsons_categories_map_the_labels_when_the_validation_json_agrees(tmp_path, tiny_overrides):
    config, _ = _coco_config(tmp_path, tiny_overrides, lambda val: None)
    ids = evaluation_category_ids(config, build_dataset(config, "val"))
    assert ids == [category["id"] for category in run_categories(config)] == sorted(ids)


def test_a_validation_json_with_other_category_ids_is_refused_naming_both_files(tmp_path, tiny_overrides):
    def shift_ids(val):
        for category in val["categories"]:
            category["id"] += 100
        for annotation in val["annotations"]:
            annotation["category_id"] += 100

    config, val_json = _coco_config(tmp_path, tiny_overrides, shift_ids)
    dataset = CocoDetectionDataset(val_json, tmp_path / "val_images")
    train_json = config["data"]["train_json"]
    with pytest.raises(ConfigError) as error:
        evaluation_category_ids(config, dataset)
    message = str(error.value)
    assert str(train_json) in message and str(val_json) in message
    assert "ids [1, 2, 3" in message and "ids [101, 102, 103" in message
