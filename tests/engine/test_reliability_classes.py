"""model.num_classes must match the dataset's categories: a mismatch stops training up front."""

import json
import shutil

import pytest

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.data import generate_synthetic_dataset
from msadkit.data.build import build_dataset
from msadkit.engine.train.trainer import train
from msadkit.errors import ConfigError


@pytest.fixture
def five_category_coco(tmp_path_factory, tmp_path):
    """The tiny synthetic dataset as a COCO dataset with a fifth category ("star", unused)."""
    source = generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "synth", num_train=4, num_val=2, image_size=64).root
    root = tmp_path / "coco"
    shutil.copytree(source, root)
    for split in ("train", "val"):
        path = root / f"{split}.json"
        data = json.loads(path.read_text())
        data["categories"].append({"id": max(c["id"] for c in data["categories"]) + 1, "name": "star"})
        path.write_text(json.dumps(data))
    return root


def coco_overrides(root, run, tiny_overrides):
    overrides = [o for o in tiny_overrides(run) if not o.startswith("data.synthetic")]
    return overrides + [
        "data.dataset=coco",
        f"data.train_json={root / 'train.json'}",
        f"data.train_images={root / 'images' / 'train'}",
        f"data.val_json={root / 'val.json'}",
        f"data.val_images={root / 'images' / 'val'}",
    ]


def test_more_categories_than_model_classes_is_refused_before_training(five_category_coco, tmp_path, tiny_overrides):
    run = tmp_path / "run"
    config = load_config("fcos_demo", coco_overrides(five_category_coco, run, tiny_overrides))
    assert config["model"]["num_classes"] == 4
    with pytest.raises(ConfigError) as info:
        train(config)
    message = str(info.value)
    assert "model.num_classes" in message and "4" in message and "5 categories" in message
    assert "circle, square, triangle, cross, star" in message
    assert str(five_category_coco / "train.json") in message
    assert not run.exists()


def test_the_cli_reports_the_mismatch_in_one_line(five_category_coco, tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    assert main(["train", "fcos_demo", *coco_overrides(five_category_coco, run, tiny_overrides)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("msadkit train: error: model.num_classes is 4")


def test_matching_num_classes_builds(five_category_coco, tmp_path, tiny_overrides):
    overrides = coco_overrides(five_category_coco, tmp_path / "run", tiny_overrides) + ["model.num_classes=5"]
    assert build_dataset(load_config("fcos_demo", overrides), "train").num_classes == 5


def test_the_synthetic_demo_matches_its_four_classes(tmp_path, tiny_overrides):
    config = load_config("fcos_demo", tiny_overrides(tmp_path / "run"))
    assert build_dataset(config, "train").class_names == ["circle", "square", "triangle", "cross"]
    assert build_dataset(config, "val").num_classes == config["model"]["num_classes"] == 4
