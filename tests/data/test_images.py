"""The one image decoder on files as cameras and datasets write them: EXIF orientation, 16-bit
images, truncated files, animated GIFs; and the dataset reading them for training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from msadkit.data import CocoDetectionDataset
from msadkit.data.images import decode_rgb, image_size, read_image
from msadkit.errors import DatasetError
from tests.image_files import (
    displayed,
    jpeg_bytes,
    move_exif_after_pixels,
    rescaled,
    save_with_orientation,
    stored_for,
    write_png16,
    write_truncated_jpeg,
)

RNG = np.random.default_rng(0)
# Not square, so every transposing orientation changes the shape.
STORED = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)


def hwc(pixels: torch.Tensor) -> np.ndarray:
    assert pixels.dtype == torch.uint8 and pixels.ndim == 3 and pixels.shape[0] == 3
    return pixels.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_oracle_of_these_tests_agrees_with_pil(tmp_path, orientation):
    path = save_with_orientation(tmp_path / "a.png", STORED, orientation)
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(image)), displayed(STORED, orientation))
    assert np.array_equal(displayed(stored_for(STORED, orientation), orientation), STORED)


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_lossless_files_decode_as_displayed_and_their_header_size_is_that_shape(tmp_path, suffix, orientation):
    path = save_with_orientation(tmp_path / f"a{suffix}", STORED, orientation)
    expected = displayed(STORED, orientation)
    decoded = read_image(path)
    assert np.array_equal(hwc(decoded.pixels), expected)
    height, width = expected.shape[:2]
    assert image_size(path) == (width, height) == decoded.size
    assert decoded.stored_size == (20, 12) and decoded.orientation == orientation


def test_a_phone_photo_taken_upright_decodes_upright(tmp_path):
    # Upright: a white top half over a black bottom half, 40 wide and 24 high; the camera stores
    # it rotated and tags orientation 6 (turn 90 degrees clockwise to display).
    upright = np.zeros((24, 40, 3), np.uint8)
    upright[:12] = 255
    path = save_with_orientation(tmp_path / "photo.jpg", stored_for(upright, 6), 6)
    with Image.open(path) as image:
        assert image.size == (24, 40)  # the stored frame is the rotated one
    pixels = decode_rgb(path).float()
    assert tuple(pixels.shape) == (3, 24, 40) and image_size(path) == (40, 24)
    assert pixels[:, :10].mean() > 245 and pixels[:, 14:].mean() < 10


def test_a_16_bit_grey_png_is_rescaled_not_clipped(tmp_path):
    values = (np.arange(16 * 20).reshape(16, 20) * 200).astype(np.uint16)  # 0 .. 63800
    path = write_png16(tmp_path / "depth.png", values)
    decoded = read_image(path)
    assert decoded.high_bit_depth
    expected = rescaled(values)
    assert np.array_equal(hwc(decoded.pixels), np.repeat(expected[:, :, None], 3, axis=2))
    assert (expected < 255).mean() > 0.95  # what clipping to 255 would have lost


def test_a_16_bit_rgb_png_is_rescaled_by_rounding(tmp_path):
    # PIL opens a 48-bit PNG as 8-bit RGB keeping the high byte (1000 -> 3); 1000 / 257 rounds to 4.
    values = RNG.integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    values[0, 0] = (1000, 30000, 65535)
    path = write_png16(tmp_path / "rgb16.png", values)
    decoded = read_image(path)
    assert decoded.high_bit_depth
    assert np.array_equal(hwc(decoded.pixels), rescaled(values))
    assert hwc(decoded.pixels)[0, 0].tolist() == [4, 117, 255]


def test_an_eight_bit_file_is_not_reported_as_rescaled(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(STORED).save(path)
    assert not read_image(path).high_bit_depth


@pytest.mark.parametrize("keep", [0.5, 0.9, -2, -1])
def test_a_truncated_jpeg_is_refused_in_one_line_naming_the_file(tmp_path, keep):
    # Seed 9: PIL alone decodes this JPEG without its end marker (-2) and says nothing.
    pixels = np.random.default_rng(9).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    size = len(jpeg_bytes(pixels))
    path = write_truncated_jpeg(tmp_path / "cut.jpg", pixels, keep if isinstance(keep, float) else size + keep)
    with Image.open(path) as image:
        assert image.size == (96, 64)  # the header is intact: only decoding finds the cut
    with pytest.raises(DatasetError) as info:
        decode_rgb(path)
    message = str(info.value)
    assert str(path) in message and "truncated" in message and "\n" not in message
    assert ".cpp" not in message  # no line of torchvision's sources


def test_a_jpeg_without_its_end_marker_is_refused_whatever_its_content(tmp_path):
    path = tmp_path / "cut.jpg"
    for seed in range(30):
        data = jpeg_bytes(np.random.default_rng(seed).integers(0, 256, (64, 96, 3), dtype=np.uint8))
        assert data.endswith(b"\xff\xd9")
        path.write_bytes(data[:-2])
        with pytest.raises(DatasetError, match="truncated"):
            decode_rgb(path)


def test_a_truncated_jpeg_is_refused_even_where_pil_is_told_to_load_truncated_images(tmp_path, monkeypatch):
    # Some programs set this global; PIL then fills the missing part with grey and says nothing.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = write_truncated_jpeg(tmp_path / "cut.jpg", RNG.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match="truncated"):
        decode_rgb(path)


def test_an_animated_gif_is_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((10, 12, 3), value, np.uint8)) for value in (40, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    pixels = decode_rgb(path)
    assert tuple(pixels.shape) == (3, 10, 12)
    with Image.open(path) as image:
        assert np.array_equal(hwc(pixels), np.asarray(image.convert("RGB")))


# ----------------------------------------------------------------------------- the training dataset
def write_coco(root: Path, files: dict[str, tuple[int, int]]) -> Path:
    """``root/ann.json`` naming ``files`` (file name -> json ``(height, width)``), one box each."""
    images = [
        {"id": k, "file_name": name, "height": h, "width": w} for k, (name, (h, w)) in enumerate(files.items(), 1)
    ]
    annotations = [
        {"id": k, "image_id": k, "category_id": 1, "bbox": [1.0, 1.0, 4.0, 4.0], "area": 16.0, "iscrowd": 0}
        for k in range(1, len(images) + 1)
    ]
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]}))
    return path


def test_the_training_dataset_reads_a_16_bit_png_as_its_rescaled_values(tmp_path):
    values = (np.arange(8 * 10).reshape(8, 10) * 800).astype(np.uint16)
    write_png16(tmp_path / "a.png", values)
    dataset = CocoDetectionDataset(write_coco(tmp_path, {"a.png": (8, 10)}), tmp_path)
    image, _ = dataset[0]
    assert np.array_equal(hwc(image)[:, :, 0], rescaled(values))
    assert int(image.max()) == round(values.max() / 257) < 255


def test_the_training_dataset_reads_a_rotated_photo_in_the_displayed_frame(tmp_path):
    upright = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    save_with_orientation(tmp_path / "a.png", stored_for(upright, 6), 6)
    dataset = CocoDetectionDataset(write_coco(tmp_path, {"a.png": (12, 20)}), tmp_path)
    image, target = dataset[0]
    assert np.array_equal(hwc(image), upright) and target["orig_size"] == (12, 20)


def test_a_json_with_the_stored_size_of_a_rotated_photo_is_one_line_naming_both_sizes(tmp_path):
    upright = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    path = save_with_orientation(tmp_path / "a.jpg", stored_for(upright, 6), 6)
    # The json was written from the stored pixels: 20 high and 12 wide.
    annotations = write_coco(tmp_path, {"a.jpg": (20, 12)})
    with pytest.raises(DatasetError) as info:
        CocoDetectionDataset(annotations, tmp_path)[0]
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and str(annotations) in message and "image id 1" in message
    assert "12x20 (h x w) as displayed" in message and "says 20x12" in message
    assert "EXIF orientation 6" in message and "stored size" in message


def test_a_plain_size_mismatch_says_nothing_about_orientation(tmp_path):
    Image.fromarray(STORED).save(tmp_path / "a.png")
    with pytest.raises(DatasetError) as info:
        CocoDetectionDataset(write_coco(tmp_path, {"a.png": (20, 12)}), tmp_path)[0]
    assert "is 12x20 (h x w) as displayed but the annotation says 20x12" in str(info.value)
    assert "EXIF" not in str(info.value)


def test_a_truncated_jpeg_in_the_training_set_is_one_line_naming_it(tmp_path):
    path = write_truncated_jpeg(tmp_path / "a.jpg", RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    dataset = CocoDetectionDataset(write_coco(tmp_path, {"a.jpg": (16, 24)}), tmp_path)
    with pytest.raises(DatasetError) as info:
        dataset[0]
    assert str(path) in str(info.value) and "truncated" in str(info.value) and "\n" not in str(info.value)


def test_a_png_whose_exif_follows_the_pixel_data_is_still_turned(tmp_path):
    path = move_exif_after_pixels(save_with_orientation(tmp_path / "a.png", STORED, 6))
    with Image.open(path) as image:
        assert "exif" not in image.info  # not among the chunks read with the header
    assert np.array_equal(hwc(decode_rgb(path)), displayed(STORED, 6))
    assert image_size(path) == (12, 20)


def test_the_size_of_a_png_is_read_without_decoding_its_pixels(tmp_path, monkeypatch):
    # PIL's PNG getexif() loads the whole image to look for a late eXIf chunk; predict and
    # pseudo-labelling read the size of every image first, so that would decode each one twice.
    from PIL import PngImagePlugin

    plain = tmp_path / "plain.png"
    Image.fromarray(STORED).save(plain)
    rotated = move_exif_after_pixels(save_with_orientation(tmp_path / "rotated.png", STORED, 8))

    def refuse(self, *args, **kwargs):
        raise AssertionError("PIL decoded the pixels")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", refuse)
    assert image_size(plain) == (20, 12) and image_size(rotated) == (12, 20)
    assert np.array_equal(hwc(decode_rgb(rotated)), displayed(STORED, 8))  # torchvision decodes it
