"""``msadkit data check`` and ``data.check_images``: every image of a COCO json decoded once, every
problem listed in one report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.data import generate_synthetic_dataset
from msadkit.data.image_check import check_images
from msadkit.errors import DatasetError
from tests.conftest import tiny_training_overrides
from tests.image_files import save_with_orientation, stored_for, write_png16, write_truncated_jpeg

RNG = np.random.default_rng(0)


def pixels(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_coco(root: Path, images: list[dict], annotations: list[dict]) -> Path:
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}))
    return path


def box(ann_id: int, image_id: int, bbox: list[float]) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox, "area": 1.0, "iscrowd": 0}


@pytest.fixture
def troubled(tmp_path) -> tuple[Path, Path]:
    """A json and its folder with one of each problem, a 16-bit image, and two clean images."""
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(pixels(16, 24)).save(root / "good.png")
    save_with_orientation(root / "upright.jpg", stored_for(pixels(16, 24), 6), 6)  # json: displayed size
    save_with_orientation(root / "sideways.jpg", stored_for(pixels(16, 24), 6), 6)  # json: stored size
    write_truncated_jpeg(root / "cut.jpg", pixels(16, 24))
    write_png16(root / "deep.png", (np.arange(16 * 24).reshape(16, 24) * 150).astype(np.uint16))
    (root / "notes.png").write_text("not an image")
    images = [
        {"id": 1, "file_name": "good.png", "height": 16, "width": 24},
        {"id": 2, "file_name": "upright.jpg", "height": 16, "width": 24},
        {"id": 3, "file_name": "sideways.jpg", "height": 24, "width": 16},
        {"id": 4, "file_name": "cut.jpg", "height": 16, "width": 24},
        {"id": 5, "file_name": "deep.png", "height": 16, "width": 24},
        {"id": 6, "file_name": "gone.png", "height": 16, "width": 24},
        {"id": 7, "file_name": "notes.png", "height": 16, "width": 24},
    ]
    annotations = [
        box(1, 1, [0.0, 0.0, 24.0, 16.0]),  # the whole image: fine
        box(2, 1, [23.5, 15.5, 1.0, 1.0]),  # half a pixel past the corner: within the tolerance
        box(3, 2, [2.0, 2.0, 20.0, 10.0]),  # fine in the displayed 16 x 24 frame
        box(4, 2, [2.0, 2.0, 10.0, 20.0]),  # drawn on the stored 24 x 16 frame: 6 px too low
        box(5, 5, [30.0, 2.0, 4.0, 4.0]),  # entirely right of the image
        box(6, 99, [1.0, 1.0, 2.0, 2.0]),  # no such image
    ]
    return write_coco(tmp_path, images, annotations), root


def test_every_problem_is_listed_once_and_the_16_bit_image_is_a_note(troubled):
    json_path, root = troubled
    report = check_images(json_path, root)
    assert report.num_images == 7 and not report.ok
    problems = "\n".join(report.problems)
    assert len(report.problems) == 7, problems
    expected = [
        f"image id 3: image file {root / 'sideways.jpg'} is 16x24 (h x w) as displayed but the annotation says 24x16",
        f"image id 4: image file {root / 'cut.jpg'} cannot be decoded: it is truncated",
        f"image id 6: image file {root / 'gone.png'} does not exist",
        f"image id 7: image file {root / 'notes.png'} cannot be decoded",
        "annotation id 4 (image id 2, ",
        "extends 6 px past the edge of the 16x24 (h x w) image",
        "annotation id 5 (image id 5, ",
        "lies entirely outside the 16x24 (h x w) image",
        "annotation id 6 refers to image_id 99",
    ]
    for text in expected:
        assert text in problems
    assert "EXIF orientation 6" in problems and "stored size" in problems
    assert not any("good.png" in p or "annotation id 1 " in p or "annotation id 2 " in p for p in report.problems)
    (note,) = report.notes
    assert "image id 5" in note and "deep.png" in note and "rescaled to 8 bits" in note
    assert all("\n" not in line for line in report.problems + report.notes)


def test_the_command_prints_the_report_and_exits_2_on_a_problem(troubled, capsys):
    json_path, root = troubled
    assert main(["data", "check", str(json_path), str(root)]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"annotation file {json_path}, images in {root}: 7 images, 7 problems, 1 note"
    assert sum(line.startswith("problem: ") for line in lines) == 7
    assert sum(line.startswith("note: ") for line in lines) == 1


def test_workers_give_the_same_report(troubled):
    json_path, root = troubled
    alone, pooled = check_images(json_path, root), check_images(json_path, root, workers=2)
    assert (pooled.problems, pooled.notes) == (alone.problems, alone.notes)


def test_a_clean_dataset_exits_0(tmp_path, capsys):
    dataset = generate_synthetic_dataset(tmp_path / "synth", num_train=3, num_val=2, image_size=64)
    assert main(["data", "check", str(dataset.train_json), str(dataset.image_root("train"))]) == 0
    assert capsys.readouterr().out.strip() == (
        f"annotation file {dataset.train_json}, images in {dataset.image_root('train')}: 3 images, 0 problems, 0 notes"
    )


def test_a_file_that_is_not_a_coco_json_is_one_line(tmp_path, capsys):
    bad = tmp_path / "ann.json"
    bad.write_text("{not json")
    assert main(["data", "check", str(bad), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "not valid json" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- data.check_images
def coco_training_config(tmp_path: Path, json_path: Path, root: Path, check: bool) -> dict:
    overrides = tiny_training_overrides(tmp_path / "run", max_iter=1) + [
        "data.dataset=coco",
        f"data.train_json={json_path}",
        f"data.train_images={root}",
        f"data.val_json={json_path}",
        f"data.val_images={root}",
        "model.num_classes=1",
        f"data.check_images={'true' if check else 'false'}",
    ]
    return load_config("fcos_demo", overrides)


def test_the_check_is_off_by_default():
    assert load_config("fcos_demo")["data"]["check_images"] is False


def test_training_with_check_images_stops_before_writing_the_run_folder(tmp_path, troubled):
    from msadkit.engine.train.trainer import train

    json_path, root = troubled
    config = coco_training_config(tmp_path, json_path, root, check=True)
    with pytest.raises(DatasetError) as info:
        train(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("data.check_images: 7 problems in the train set (")
    assert "gone.png does not exist" in message and "and 4 more" in message
    assert "; 7 problems in the val set (" in message  # the same json serves as both sets here
    assert f"`msadkit data check {json_path} {root}` lists them all" in message
    assert not (tmp_path / "run").exists()


def test_training_with_check_images_on_a_clean_set_trains(tmp_path):
    from msadkit.engine.train.trainer import train

    overrides = tiny_training_overrides(tmp_path / "run", max_iter=1) + ["data.check_images=true"]
    config = load_config("fcos_demo", overrides)
    run = train(config, evaluate=False)
    assert (run / "model_final.pth").is_file()
