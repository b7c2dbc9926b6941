"""``msadkit predict``'s drawings: the higher-scoring label is drawn on top, and label text is light
on dark boxes and dark on light ones."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision.utils
from PIL import Image

from msadkit.engine.inference import predict

# _PALETTE[category_id % 8]: 2 is blue (dark), 3 is yellow (light).
BLUE, YELLOW = 2, 3
NAMES = {BLUE: "car", YELLOW: "cat"}


def detection(category_id: int, score: float, bbox=(10.0, 10.0, 70.0, 50.0)) -> dict:
    return {"category_id": category_id, "score": score, "bbox": list(bbox)}


@pytest.fixture
def gray_image(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.full((80, 100, 3), 128, dtype=np.uint8)).save(path)
    return path


def test_labels_are_drawn_from_the_lowest_score_up_with_contrasting_text(tmp_path, gray_image, monkeypatch):
    calls = []
    real = torchvision.utils.draw_bounding_boxes
    monkeypatch.setattr(torchvision.utils, "draw_bounding_boxes", lambda *a, **k: calls.append(k) or real(*a, **k))
    # As predict_images hands them over: highest score first.
    detections = [detection(BLUE, 0.9), detection(YELLOW, 0.7), detection(BLUE, 0.6)]
    predict._draw(gray_image, detections, NAMES, tmp_path / "out.png")
    (kwargs,) = calls
    assert kwargs["labels"] == ["car 0.60", "cat 0.70", "car 0.90"]  # the last drawn is on top
    assert kwargs["colors"] == ["blue", "yellow", "blue"]
    assert kwargs["fill_labels"] is True
    assert kwargs["label_colors"] == ["white", "black", "white"]


@pytest.mark.parametrize("color", ["red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white"])
def test_every_palette_colour_gets_the_text_colour_that_contrasts_more(color):
    def contrast(a: str, b: str) -> float:
        la, lb = predict._relative_luminance(a), predict._relative_luminance(b)
        return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)

    text = predict.label_text_color(color)
    other = "white" if text == "black" else "black"
    assert contrast(text, color) >= contrast(other, color)
    assert contrast(text, color) >= 4.0  # readable: close to WCAG's 4.5 for small text at worst


def label_band(png, bbox=(10, 10, 80, 60)) -> np.ndarray:
    """The pixels where a label sits: just inside the box's top-left corner (width 2, margin 1)."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    x1, y1 = bbox[0], bbox[1]
    return pixels[y1 + 3 : y1 + 12, x1 + 3 : x1 + 30]


def near(pixels: np.ndarray, rgb) -> np.ndarray:
    return np.abs(pixels - np.array(rgb)).sum(axis=-1) < 60


@pytest.mark.parametrize(
    "top, under, band, text",
    [(BLUE, YELLOW, (0, 0, 255), (255, 255, 255)), (YELLOW, BLUE, (255, 255, 0), (0, 0, 0))],
    ids=["blue-on-top", "yellow-on-top"],
)
def test_the_drawn_png_shows_the_higher_score_on_top_and_readable(tmp_path, gray_image, top, under, band, text):
    out = tmp_path / "out.png"
    # Same box, same label position: only the top label can be seen.
    predict._draw(gray_image, [detection(top, 0.9), detection(under, 0.5)], NAMES, out)
    pixels = label_band(out)
    under_rgb = (255, 255, 0) if under == YELLOW else (0, 0, 255)
    assert near(pixels, band).mean() > 0.5  # the top label's band fills the label area
    assert not near(pixels, under_rgb).any()  # nothing of the label underneath shows
    assert near(pixels, text).sum() >= 5  # its text is drawn in the contrasting colour
