"""``msadkit predict`` on images as cameras and datasets write them: an EXIF-rotated photo is
detected and drawn in its displayed frame, a 16-bit PNG as its rescaled values, and a truncated
JPEG is named and skipped while the others are processed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from msadkit.engine.inference.predict import load_predictor, predict_images
from tests.engine.inference_runs import image_copies, make_run
from tests.image_files import rescaled, save_with_orientation, stored_for, write_png16, write_truncated_jpeg

THRESHOLD = 0.3


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    run, config = make_run(tmp_path_factory.mktemp("run") / "run")
    model, config = load_predictor(run)
    return model, config


def upright_image(config, folder, size=(64, 96)):
    """A validation image of the run's dataset, ``(h, w)`` not square so a rotation shows."""
    (path,) = image_copies(config, folder, [size])
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def detections_by_file(out):
    entries = json.loads((out / "detections.json").read_text())
    by_file = {}
    for entry in entries:
        by_file.setdefault(entry["image_file"], []).append((entry["category_id"], entry["bbox"], entry["score"]))
    return by_file


def assert_same_detections(found, expected):
    assert len(found) == len(expected) > 0
    for (cat_a, box_a, score_a), (cat_b, box_b, score_b) in zip(found, expected):
        assert cat_a == cat_b
        assert box_a == pytest.approx(box_b, abs=1e-3)  # pixels of a 96 px image
        assert score_a == pytest.approx(score_b, abs=1e-5)  # scores lie in (0, 1)


@pytest.mark.parametrize("suffix", [".png", ".webp"])
def test_a_rotated_photo_is_detected_and_drawn_in_its_displayed_frame(tmp_path, predictor, suffix):
    model, config = predictor
    upright = upright_image(config, tmp_path / "source")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(upright).save(folder / "upright.png")
    # The same picture as a camera held sideways stores it: rotated pixels and orientation 6.
    save_with_orientation(folder / f"rotated{suffix}", stored_for(upright, 6), 6)
    out = tmp_path / "out"
    summary = predict_images(model, config, [folder], out, score_threshold=THRESHOLD)
    assert not summary.unreadable
    found = detections_by_file(out)
    assert_same_detections(found[str(folder / f"rotated{suffix}")], found[str(folder / "upright.png")])
    for entry in json.loads((out / "detections.json").read_text()):
        x, y, w, h = entry["bbox"]
        assert x + w <= 96 + 1e-3 and y + h <= 64 + 1e-3  # in the displayed 64 x 96 frame
    drawn = {name: np.asarray(Image.open(out / f"{name}.png")) for name in ("upright", "rotated")}
    assert drawn["rotated"].shape == (64, 96, 3)
    assert np.array_equal(drawn["rotated"], drawn["upright"])


def test_a_16_bit_png_is_predicted_as_its_rescaled_values(tmp_path, predictor):
    model, config = predictor
    upright = upright_image(config, tmp_path / "source").astype(np.uint16)
    values = upright * 257 + (upright % 7) * 20  # 16-bit values whose rescaled 8 bits are `upright`
    assert np.array_equal(rescaled(values), upright)
    folder = tmp_path / "images"
    folder.mkdir()
    write_png16(folder / "deep.png", values)
    Image.fromarray(upright.astype(np.uint8)).save(folder / "eight.png")
    out = tmp_path / "out"
    predict_images(model, config, [folder], out, score_threshold=THRESHOLD)
    found = detections_by_file(out)
    assert_same_detections(found[str(folder / "deep.png")], found[str(folder / "eight.png")])
    # Drawn alike: the 16-bit image is drawn from its rescaled values, not clipped to white.
    assert (values > 255).mean() > 0.9
    assert np.array_equal(np.asarray(Image.open(out / "deep.png")), np.asarray(Image.open(out / "eight.png")))


def test_a_truncated_jpeg_is_named_and_skipped_and_the_others_are_predicted(tmp_path, predictor):
    model, config = predictor
    folder = tmp_path / "images"
    good = image_copies(config, folder, [(64, 64), (64, 80)])
    broken = write_truncated_jpeg(folder / "broken.jpg", upright_image(config, tmp_path / "source"))
    out = tmp_path / "out"
    summary = predict_images(model, config, [folder], out, score_threshold=THRESHOLD)
    ((path, reason),) = summary.unreadable
    assert path == broken and str(broken) in reason and "truncated" in reason and "\n" not in reason
    assert sorted(p.name for p in summary.drawn) == sorted(p.stem + ".png" for p in good)
    assert set(detections_by_file(out)) == {str(p) for p in good}
