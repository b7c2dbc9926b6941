"""`msadkit pseudo-label`: a teacher's detections as a COCO json, read back and used for SAD training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from msadkit.cli import main
from msadkit.config import dump_config, load_config
from msadkit.data import CocoDetectionDataset
from msadkit.data.build import resolve_data_paths
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.trainer import train
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import save_atomic


@pytest.fixture
def teacher(tmp_path, tiny_overrides):
    """A freshly built tiny RetinaNet teacher saved as ``model_final.pth``; every score passes its filter.

    Returns ``(checkpoint path, config, model)``.
    """
    overrides = tiny_overrides(tmp_path / "teacher", arch="retinanet") + [
        "data.synthetic.num_unlabeled=4",
        "model.retinanet.score_thresh=0.0",
        "model.retinanet.detections_per_image=20",
    ]
    config = load_config("adl/retinanet_teacher_demo", overrides)
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = save_atomic({"model": model.state_dict(), "config": config}, tmp_path / "teacher" / "model_final.pth")
    (path.parent / "config.yaml").write_text(dump_config(config))  # a run folder as `msadkit train` leaves it
    return path, config, model


def read(path) -> dict:
    return json.loads(path.read_text())


def test_pseudo_labels_are_the_teacher_detections_in_coco_format(tmp_path, teacher, capsys):
    checkpoint, config, model = teacher
    out = tmp_path / "labels" / "pseudo.json"
    assert main(["pseudo-label", "--teacher", str(checkpoint), "--score-threshold", "0.0", "--out", str(out)]) == 0
    assert "pseudo-labels on 4 images" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["pseudo.json"]  # no temporary file left behind

    labels = read(out)
    paths = resolve_data_paths(config)
    unlabeled = read(paths["unlabeled_json"])
    assert labels["images"] == unlabeled["images"]
    assert labels["categories"] == read(paths["train_json"])["categories"]
    assert len(labels["annotations"]) == 4 * 20

    # Recompute image 1's detections by hand: the 64 px image is not resized, only normalised.
    pixels = np.asarray(Image.open(paths["unlabeled_images"] / unlabeled["images"][0]["file_name"]).convert("RGB"))
    image = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)
    mean = torch.tensor(config["model"]["pixel_mean"]).view(3, 1, 1)
    std = torch.tensor(config["model"]["pixel_std"]).view(3, 1, 1)
    with torch.no_grad():
        (expected,) = model(((image - mean) / std)[None], [(64, 64)])
    written = [a for a in labels["annotations"] if a["image_id"] == 1]
    written.sort(key=lambda a: -a["score"])
    for annotation, box, score, label in zip(written, expected["boxes"], expected["scores"], expected["labels"]):
        x1, y1, x2, y2 = box.tolist()
        assert annotation["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
        assert annotation["score"] == pytest.approx(float(score), abs=1e-6)
        assert annotation["category_id"] == int(label) + 1  # synthetic category ids start at 1
        assert annotation["area"] == pytest.approx(annotation["bbox"][2] * annotation["bbox"][3], rel=1e-6)

    # The file reads back as a detection dataset with the same label mapping.
    dataset = CocoDetectionDataset(out, paths["unlabeled_images"])
    assert len(dataset) == 4 and dataset.category_ids == [c["id"] for c in labels["categories"]]
    _, target = dataset[0]
    assert target["boxes"].shape[0] == 20


def test_score_threshold_keeps_exactly_the_scores_above_it(tmp_path, teacher):
    checkpoint = teacher[0].parent  # the teacher's run folder
    everything, kept = tmp_path / "all.json", tmp_path / "kept.json"
    assert main(["pseudo-label", "--teacher", str(checkpoint), "--score-threshold", "0", "--out", str(everything)]) == 0
    scores = sorted(a["score"] for a in read(everything)["annotations"])
    threshold = scores[len(scores) // 2]
    assert main(["pseudo-label", "--teacher", str(checkpoint), "--score-threshold", str(threshold), "--out", str(kept)]) == 0
    kept_scores = [a["score"] for a in read(kept)["annotations"]]
    assert all(s >= threshold for s in kept_scores)
    assert len(kept_scores) == sum(s >= threshold for s in scores)
    assert [a["id"] for a in read(kept)["annotations"]] == list(range(1, len(kept_scores) + 1))


def test_config_and_weights_on_an_image_folder(tmp_path, teacher):
    checkpoint, config, _ = teacher
    config_path = tmp_path / "teacher.yaml"
    config_path.write_text(dump_config(config))
    # A folder of images under other names: ids follow the sorted file names.
    folder = tmp_path / "images"
    folder.mkdir()
    source = resolve_data_paths(config)["unlabeled_images"]
    for new_name, old in zip(("b.png", "a.png"), sorted(source.iterdir())[:2]):
        shutil.copy(old, folder / new_name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "folder.json"
    argv = ["pseudo-label", "--config", str(config_path), "--weights", str(checkpoint), "--images", str(folder)]
    assert main(argv + ["--score-threshold", "0", "--out", str(out), "--batch-size", "1"]) == 0
    labels = read(out)
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in labels["images"]] == [
        (1, "a.png", 64, 64),
        (2, "b.png", 64, 64),
    ]
    assert {a["image_id"] for a in labels["annotations"]} == {1, 2}
    assert len(CocoDetectionDataset(out, folder)) == 2


def test_user_errors_exit_with_status_2(tmp_path, teacher, capsys):
    checkpoint, _, _ = teacher
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["pseudo-label", "--teacher", str(checkpoint), "--images", str(empty), "--out", str(tmp_path / "x.json")]) == 2
    assert "holds no image files" in capsys.readouterr().err
    assert main(["pseudo-label", "--out", str(tmp_path / "x.json")]) == 2
    assert "--teacher RUN_DIR" in capsys.readouterr().err
    assert main(["pseudo-label", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "x.json")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_semi_supervised_adl_run_on_pseudo_labels(tmp_path, teacher, tiny_overrides):
    checkpoint, _, _ = teacher
    labels = tmp_path / "pseudo.json"
    assert main(["pseudo-label", "--teacher", str(checkpoint), "--score-threshold", "0.0", "--out", str(labels)]) == 0
    run = tmp_path / "sad"
    overrides = tiny_overrides(run, arch="retinanet", max_iter=3) + [
        "data.synthetic.num_unlabeled=4",
        f"distill.teacher={checkpoint}",
        f"data.pseudo_labels_json={labels}",
    ]
    config = load_config("adl/retinanet_sad_demo", overrides)
    train(config, evaluate=False)
    records = read_metrics(run / "metrics.jsonl")
    assert [r["iter"] for r in records] == [1, 2, 3]
    assert all(isinstance(r["loss_adl_cls"], float) and r["loss_adl_cls"] > 0 for r in records)
