"""Tests of the COCO-format detection dataset and its input validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from msadkit.data import CocoDetectionDataset, generate_synthetic_dataset
from msadkit.errors import DatasetError

H, W = 8, 10


def _write_png(path: Path, pixels: np.ndarray, mode: str = "RGB") -> None:
    Image.fromarray(pixels, mode).save(path)


def _base_coco() -> dict[str, Any]:
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": W, "height": H},
            {"id": 20, "file_name": "b.png", "width": W, "height": H},
            {"id": 30, "file_name": "sub/c.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 4.0], "area": 12.0, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 2], "area": 10.0, "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [4, 4, 2, 2], "area": 4.0, "iscrowd": 1},
            {"id": 4, "image_id": 30, "category_id": 7, "bbox": [6.5, 1.0, 9.0, 3.0], "area": 27.0, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    """A folder with images/ (three small PNGs, one in a sub-folder) and ann.json."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_png(images / "a.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    _write_png(images / "b.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    _write_png(images / "sub" / "c.png", rng.integers(0, 256, (6, 12, 3), dtype=np.uint8))
    (tmp_path / "ann.json").write_text(json.dumps(_base_coco()))
    return tmp_path


def _dataset(root: Path, **kwargs: Any) -> CocoDetectionDataset:
    return CocoDetectionDataset(root / "ann.json", root / "images", **kwargs)


def test_loads_images_and_targets(coco_dir: Path) -> None:
    ds = _dataset(coco_dir)
    assert len(ds) == 3 and ds.image_ids == [10, 20, 30]
    assert ds.category_ids == [3, 7] and ds.class_names == ["three", "seven"] and ds.num_classes == 2
    assert ds.coco_json_path == coco_dir / "ann.json"

    image, target = ds[0]
    expected = np.asarray(Image.open(coco_dir / "images" / "a.png"), dtype=np.uint8).transpose(2, 0, 1)
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert torch.equal(image, torch.from_numpy(expected.copy()))
    assert target["image_id"] == 10 and target["orig_size"] == (H, W) and target["scale"] == 1.0
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    # xywh -> xyxy; category 7 is label 1 and category 3 is label 0; the crowd box is left out.
    assert torch.equal(target["boxes"], torch.tensor([[1.0, 2.0, 4.0, 6.0], [0.0, 0.0, 5.0, 2.0]]))
    assert torch.equal(target["labels"], torch.tensor([1, 0]))


def test_crowd_boxes_are_kept_when_asked(coco_dir: Path) -> None:
    _, target = _dataset(coco_dir, skip_crowd=False)[0]
    assert torch.equal(target["boxes"][-1], torch.tensor([4.0, 4.0, 6.0, 6.0]))
    assert target["labels"].tolist() == [1, 0, 0]


def test_image_without_boxes_gives_empty_tensors(coco_dir: Path) -> None:
    _, target = _dataset(coco_dir)[1]
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_boxes_are_clipped_to_the_image(coco_dir: Path) -> None:
    image, target = _dataset(coco_dir)[2]
    assert image.shape == (3, 6, 12) and target["orig_size"] == (6, 12)
    assert torch.equal(target["boxes"], torch.tensor([[6.5, 1.0, 12.0, 4.0]]))


def test_transform_is_applied(coco_dir: Path) -> None:
    def double(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        return image * 2, dict(target, scale=target["scale"] * 2)

    plain_image, _ = _dataset(coco_dir)[0]
    image, target = _dataset(coco_dir, transform=double)[0]
    assert torch.equal(image, plain_image * 2) and target["scale"] == 2.0


def test_grayscale_and_rgba_become_rgb(coco_dir: Path) -> None:
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    _write_png(coco_dir / "images" / "a.png", gray, "L")
    rgba = np.dstack([np.full((H, W), v, np.uint8) for v in (10, 20, 30, 0)])
    _write_png(coco_dir / "images" / "b.png", rgba, "RGBA")
    ds = _dataset(coco_dir)
    image, _ = ds[0]
    assert image.shape == (3, H, W)
    for c in range(3):
        assert torch.equal(image[c], torch.from_numpy(gray))
    image, _ = ds[1]
    assert image.shape == (3, H, W)
    assert image[:, 0, 0].tolist() == [10, 20, 30] and bool((image == image[:, :1, :1]).all())


def test_corrupt_image_raises_dataset_error_when_loaded(coco_dir: Path) -> None:
    bad = coco_dir / "images" / "b.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = _dataset(coco_dir)  # construction only stats files
    with pytest.raises(DatasetError, match=str(bad)):
        ds[1]
    truncated = coco_dir / "images" / "a.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DatasetError, match=str(truncated)):
        ds[0]


def test_image_size_disagreeing_with_json_raises(coco_dir: Path) -> None:
    path = coco_dir / "images" / "a.png"
    _write_png(path, np.zeros((H + 1, W, 3), np.uint8))
    with pytest.raises(DatasetError, match="a.png") as info:
        _dataset(coco_dir)[0]
    assert "image id 10" in str(info.value)


def _edit(fn: Callable[[dict], None]) -> Callable[[dict], dict]:
    def apply(coco: dict) -> dict:
        coco = copy.deepcopy(coco)
        fn(coco)
        return coco

    return apply


def _set_bbox(bbox: Any) -> Callable[[dict], dict]:
    return _edit(lambda c: c["annotations"][0].__setitem__("bbox", bbox))


BAD_JSON_CASES = {
    "no images": (_edit(lambda c: c.pop("images")), ['"images"']),
    "no annotations": (_edit(lambda c: c.pop("annotations")), ['"annotations"']),
    "no categories": (_edit(lambda c: c.pop("categories")), ['"categories"']),
    "images not a list": (_edit(lambda c: c.__setitem__("images", {"id": 1})), ['"images"', "dict"]),
    "annotations not a list": (_edit(lambda c: c.__setitem__("annotations", "x")), ['"annotations"', "str"]),
    "unknown image_id": (
        _edit(lambda c: c["annotations"][1].__setitem__("image_id", 99)),
        ["annotation id 2", "image_id 99"],
    ),
    "unknown category_id": (
        _edit(lambda c: c["annotations"][3].__setitem__("category_id", 5)),
        ["annotation id 4", "category_id 5"],
    ),
    "bbox with 3 numbers": (_set_bbox([1, 2, 3]), ["annotation id 1", "bbox"]),
    "bbox with a string": (_set_bbox([1, 2, "3", 4]), ["annotation id 1", "bbox"]),
    "bbox with nan": (_set_bbox([1, 2, float("nan"), 4]), ["annotation id 1", "bbox"]),
    "bbox with infinity": (_set_bbox([1, 2, 3, float("inf")]), ["annotation id 1", "bbox"]),
    "bbox with zero width": (_set_bbox([1, 2, 0, 4]), ["annotation id 1", "non-positive"]),
    "bbox with negative height": (_set_bbox([1, 2, 3, -1]), ["annotation id 1", "non-positive"]),
    "duplicate image id": (_edit(lambda c: c["images"][1].__setitem__("id", 10)), ["image id 10", "twice"]),
    "top level list": (lambda c: [c], ["list"]),
}


@pytest.mark.parametrize("case", list(BAD_JSON_CASES))
def test_malformed_json_raises_one_clear_error(coco_dir: Path, case: str) -> None:
    edit, fragments = BAD_JSON_CASES[case]
    path = coco_dir / "ann.json"
    path.write_text(json.dumps(edit(_base_coco())))  # NaN / Infinity are written as json literals
    with pytest.raises(DatasetError) as info:
        _dataset(coco_dir)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_unparsable_json_names_the_line(coco_dir: Path) -> None:
    path = coco_dir / "ann.json"
    path.write_text('{\n  "images": [],\n  "annotations": [,\n  "categories": []\n}\n')
    with pytest.raises(DatasetError, match="line 3") as info:
        _dataset(coco_dir)
    assert str(path) in str(info.value)


def test_missing_json_folder_and_image_file(coco_dir: Path) -> None:
    with pytest.raises(DatasetError, match="nope.json"):
        CocoDetectionDataset(coco_dir / "nope.json", coco_dir / "images")
    with pytest.raises(DatasetError, match="no_images"):
        CocoDetectionDataset(coco_dir / "ann.json", coco_dir / "no_images")
    missing = coco_dir / "images" / "sub" / "c.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=str(missing)):
        _dataset(coco_dir)


def test_reads_a_generated_synthetic_split_like_pycocotools(tmp_path: Path) -> None:
    synth = generate_synthetic_dataset(tmp_path / "synth", num_train=5, num_val=1, image_size=64, seed=2)
    ds = CocoDetectionDataset(synth.train_json, synth.image_root("train"))
    coco = COCO(str(synth.train_json))
    assert ds.class_names == list(synth.class_names)
    total = 0
    for index in range(len(ds)):
        image, target = ds[index]
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[target["image_id"]]))
        expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        assert torch.equal(target["boxes"], expected.float())
        assert target["labels"].tolist() == [a["category_id"] - 1 for a in anns]
        total += len(anns)
    assert total == len(coco.getAnnIds())


def test_formats_torchvision_cannot_decode_fall_back_to_pil(coco_dir: Path) -> None:
    # A 16-bit grayscale PNG keeps its full range (value * 255 / 65535, grey in all three channels;
    # PIL's convert("RGB") would clip it to 255) and a BMP (no torchvision decoder) gives the RGB
    # pixels PIL's convert("RGB") gives.
    deep = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 900).astype(np.uint16)
    Image.fromarray(deep).save(coco_dir / "images" / "a.png")
    colours = np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(colours).save(coco_dir / "images" / "b.png", format="BMP")  # named .png, BMP inside
    ds = _dataset(coco_dir)
    grey = torch.from_numpy(np.rint(deep.astype(np.float64) * 255 / 65535).astype(np.uint8))
    with Image.open(coco_dir / "images" / "b.png") as pil:
        bmp = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
    for index, expected in ((0, grey.expand(3, H, W)), (1, bmp)):
        image, _ = ds[index]
        assert image.dtype == torch.uint8 and torch.equal(image, expected)
