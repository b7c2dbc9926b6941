"""`msadkit predict`: drawn images and a COCO results json of a finished run, and its bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from msadkit.cli import main
from msadkit.modeling.image_batch import pixel_normalizer
from msadkit.modeling.loading import load_run_model
from tests.engine.inference_runs import image_copies, make_run, read_rgb


def run_cli(args, capsys):
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def branch_alone_run(folder, branch, teacher, teacher_config):
    """A run folder of ``msad/fcos_<branch>_demo`` (the teacher's test sizes and 256-pixel padding)
    holding the MSAD teacher's shared backbone, FPN and head, as an MSAD student starts."""
    from msadkit.config import dump_config, load_config
    from msadkit.distill.build import init_student_from_teacher
    from msadkit.modeling.registry import build_model
    from msadkit.utils.checkpoint import save_atomic
    from tests.conftest import tiny_training_overrides

    overrides = [o for o in tiny_training_overrides(folder) if not o.startswith("model.arch")]
    config = load_config(
        f"msad/fcos_{branch}_demo",
        overrides + ["data.test_max_size=128", "model.fcos.detections_per_image=1000", "data.size_divisibility=256"],
    )
    model = build_model(config).eval()
    init_student_from_teacher(model, teacher, student_config=config, teacher_config=teacher_config)
    folder.mkdir(parents=True)
    save_atomic({"model": model.state_dict(), "config": config}, folder / "model_final.pth")
    (folder / "config.yaml").write_text(dump_config(config))
    return folder


@pytest.fixture
def fcos_run(tmp_path):
    return make_run(tmp_path / "run")


def test_predict_writes_the_detections_of_the_model_in_original_pixels(tmp_path, fcos_run, capsys):
    run, config = fcos_run
    # 64x64 is the test size (no resize); 128x128 is halved, so boxes come back doubled.
    small, large = image_copies(config, tmp_path / "images", [(64, 64), (128, 128)])
    out = tmp_path / "pred"
    status, stdout, _ = run_cli(
        ["predict", str(run), str(small), str(large), "--out", str(out), "--score-threshold", "0.3", "--device", "cpu"],
        capsys,
    )
    assert status == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [small.stem + ".png", large.stem + ".png", "detections.json"]
    )
    entries = json.loads((out / "detections.json").read_text())
    assert entries and all(set(e) == {"image_file", "image_id", "category_id", "bbox", "score"} for e in entries)
    assert all(e["score"] >= 0.3 for e in entries)

    # Independently: the model on the normalised 64 px image, boxes turned into [x, y, w, h].
    model, _ = load_run_model(run)
    with torch.no_grad():
        (expected,) = model(pixel_normalizer(config)(read_rgb(small).to(torch.uint8)), [(64, 64)])
    keep = expected["scores"] >= 0.3
    written = sorted((e for e in entries if e["image_file"] == str(small)), key=lambda e: -e["score"])
    assert len(written) == int(keep.sum()) > 0
    for entry, box, score, label in zip(
        written, expected["boxes"][keep], expected["scores"][keep], expected["labels"][keep]
    ):
        x1, y1, x2, y2 = box.tolist()
        assert entry["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
        assert entry["score"] == pytest.approx(float(score), abs=1e-5)
        assert entry["category_id"] == int(label) + 1  # synthetic category ids start at 1

    # The 128 px image is drawn at its own size, with red boxes where it has detections.
    drawn = np.asarray(Image.open(out / f"{large.stem}.png"))
    original = np.asarray(Image.open(large).convert("RGB"))
    assert drawn.shape == original.shape
    large_entries = [e for e in entries if e["image_file"] == str(large)]
    assert large_entries and all(
        0 <= e["bbox"][0] <= 128 and e["bbox"][0] + e["bbox"][2] <= 128 + 1e-3 for e in large_entries
    )
    assert (drawn != original).any()
    assert f"{len(entries)} detections on 2 images" in stdout


def test_predict_an_msad_teacher_branch_and_refuse_a_branch_elsewhere(tmp_path, capsys):
    run, config = make_run(tmp_path / "teacher", "msad_teacher")
    (image,) = image_copies(config, tmp_path / "images", [(64, 64)])
    results = {}
    for branch in ("high", "low"):
        out = tmp_path / branch
        status, _, err = run_cli(
            [
                "predict",
                str(run),
                str(image),
                "--out",
                str(out),
                "--branch",
                branch,
                "--device",
                "cpu",
                "--score-threshold",
                "0.2",
            ],
            capsys,
        )
        assert status == 0, err
        results[branch] = json.loads((out / "detections.json").read_text())
    assert results["high"] != results["low"]  # the branches see different pyramids

    # Each branch is the model of that resolution built alone with the teacher's shared backbone,
    # FPN and head: a plain FCOS on the image (high), the low-resolution FCOS on its 0.5x copy (low).
    teacher, teacher_config = load_run_model(run)
    for branch in ("high", "low"):
        alone = branch_alone_run(tmp_path / f"{branch}_alone", branch, teacher, teacher_config)
        out = tmp_path / f"{branch}_alone_out"
        status, _, err = run_cli(
            ["predict", str(alone), str(image), "--out", str(out), "--device", "cpu", "--score-threshold", "0.2"],
            capsys,
        )
        assert status == 0, err
        expected = json.loads((out / "detections.json").read_text())
        assert len(results[branch]) == len(expected) > 0, branch
        for got, want in zip(results[branch], expected):
            assert got["category_id"] == want["category_id"], branch
            assert got["bbox"] == pytest.approx(want["bbox"], abs=1e-3), branch  # pixels of a 64 px image
            assert got["score"] == pytest.approx(want["score"], abs=1e-5), branch  # scores in (0, 1)

    fcos, _ = make_run(tmp_path / "fcos")
    status, _, err = run_cli(
        ["predict", str(fcos), str(image), "--out", str(tmp_path / "x"), "--branch", "low"], capsys
    )
    assert status == 2 and "only an MSAD teacher has branches" in err


def test_predict_on_a_folder_without_images(tmp_path, fcos_run, capsys):
    run, _ = fcos_run
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    status, _, err = run_cli(
        ["predict", str(run), str(empty), "--out", str(tmp_path / "out"), "--device", "cpu"], capsys
    )
    assert status == 2
    assert str(empty) in err and "holds no image files" in err
    assert len(err.strip().splitlines()) == 1


def test_predict_names_an_unreadable_image_and_still_processes_the_others(tmp_path, fcos_run, capsys):
    run, config = fcos_run
    folder = tmp_path / "images"
    good = image_copies(config, folder, [(64, 64), (64, 80)])
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    out = tmp_path / "out"
    status, stdout, err = run_cli(
        ["predict", str(run), str(folder), "--out", str(out), "--score-threshold", "0.3", "--device", "cpu"], capsys
    )
    assert status == 1
    assert f"cannot read image {broken}" in err
    assert sorted(p.name for p in out.iterdir()) == sorted([p.stem + ".png" for p in good] + ["detections.json"])
    files = {e["image_file"] for e in json.loads((out / "detections.json").read_text())}
    assert files == {str(p) for p in good}
    assert "on 2 images" in stdout


def test_predict_a_run_folder_without_weights(tmp_path, fcos_run, capsys):
    run, config = fcos_run
    (image,) = image_copies(config, tmp_path / "images", [(64, 64)])
    (run / "model_final.pth").unlink()
    out = tmp_path / "out"
    status, _, err = run_cli(["predict", str(run), str(image), "--out", str(out), "--device", "cpu"], capsys)
    assert status == 2
    assert "model_final.pth" in err and "train that run to the end first" in err
    assert not out.exists()


def test_only_images_that_pad_alike_share_a_batch(fcos_run):
    from msadkit.engine.inference.detect import same_shape_batches

    _, config = fcos_run  # test short side 64, long side at most 128, padding to multiples of 32
    sizes = [(64, 64), (64, 100), (96, 80), (70, 200), (64, 70), (128, 128), (64, 128)]
    records = [{"height": h, "width": w} for h, w in sizes]
    # padded: 64x64, 64x128, 96x64 (77x64), 64x128 (45x128), 64x96, 64x64, 64x128
    assert same_shape_batches(config, records, 2) == [[0, 5], [1, 3], [6], [2], [4]]
    assert same_shape_batches(config, records, 8) == [[0, 5], [1, 3, 6], [2], [4]]


def test_predict_refuses_to_draw_over_its_input_images(tmp_path, fcos_run, capsys):
    run, config = fcos_run
    (image,) = image_copies(config, tmp_path / "images", [(64, 64)])
    before = image.read_bytes()
    status, _, err = run_cli(
        ["predict", str(run), str(image), str(image), "--out", str(image.parent), "--device", "cpu"], capsys
    )
    assert status == 2 and "would replace the input" in err
    assert image.read_bytes() == before


def test_the_progress_bar_counts_batches(tmp_path, fcos_run, capsys):
    from msadkit.engine.inference.predict import load_predictor, predict_images

    run, config = fcos_run
    images = image_copies(config, tmp_path / "images", [(64, 64), (64, 64), (64, 100)])
    model, config = load_predictor(run)
    summary = predict_images(model, config, images, tmp_path / "out", batch_size=2, progress=True)
    assert len(summary.drawn) == 3
    err = capsys.readouterr().err
    assert "detect" in err and "2/2" in err  # two 64x64 images in one batch, the 64x100 one alone
