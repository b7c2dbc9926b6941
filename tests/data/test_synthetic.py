"""Tests of the synthetic shapes dataset generator."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from msadkit.data import synthetic
from msadkit.data.synthetic import (
    CLASS_NAMES,
    MAX_OCCLUDED_FRACTION,
    generate_synthetic_dataset,
    render_scene,
    sample_object_side,
    shape_mask,
)
from msadkit.errors import DatasetError

TINY = dict(num_train=6, num_val=3, num_unlabeled=2, image_size=64, max_objects=4)


def _all_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate_synthetic_dataset(tmp_path / "a", seed=3, **TINY)
    b = generate_synthetic_dataset(tmp_path / "b", seed=3, **TINY)
    c = generate_synthetic_dataset(tmp_path / "c", seed=4, **TINY)
    for split in ("train", "val", "unlabeled"):
        assert a.json_path(split).read_bytes() == b.json_path(split).read_bytes()
        files = sorted(p.name for p in a.image_root(split).iterdir())
        assert files == sorted(p.name for p in b.image_root(split).iterdir())
        for name in files:
            assert np.array_equal(_pixels(a.image_root(split) / name), _pixels(b.image_root(split) / name))
    assert a.train_json.read_bytes() != c.train_json.read_bytes()
    assert not np.array_equal(
        _pixels(a.image_root("val") / "000001.png"), _pixels(c.image_root("val") / "000001.png")
    )


def test_second_call_with_same_parameters_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = generate_synthetic_dataset(out, seed=0, **TINY)
    before = _all_files(out)
    second = generate_synthetic_dataset(out, seed=0, **TINY)
    assert second == first
    assert _all_files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folder left behind


def test_changed_parameters_regenerate_in_place(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate_synthetic_dataset(out, seed=0, **TINY)
    params = dict(TINY, num_val=5, num_unlabeled=0)
    ds = generate_synthetic_dataset(out, seed=0, **params)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_val"] == 5 and manifest["num_unlabeled"] == 0
    assert len(json.loads(ds.val_json.read_text())["images"]) == 5
    assert ds.unlabeled_json is None
    assert not (out / "unlabeled.json").exists() and not (out / "images" / "unlabeled").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_interrupted_generation_leaves_no_dataset_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write_split = synthetic._write_split
    calls = []

    def failing_write_split(root, split, count, **kwargs):
        calls.append(split)
        real_write_split(root, split, count, **kwargs)
        if split == "val":
            raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_split", failing_write_split)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(tmp_path / "fresh", seed=0, **TINY)
    assert calls == ["train", "val"]
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(synthetic, "_write_split", real_write_split)
    old = generate_synthetic_dataset(tmp_path / "old", seed=0, **TINY)
    old_manifest = old.manifest_path.read_text()
    monkeypatch.setattr(synthetic, "_write_split", failing_write_split)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(tmp_path / "old", seed=1, **TINY)
    assert old.manifest_path.read_text() == old_manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_concurrent_generation_of_the_same_dataset_keeps_the_first_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ds"
    real_write_split = synthetic._write_split
    inner_files: dict[str, int] = {}

    def write_split_while_another_process_finishes(root, split, count, **kwargs):
        real_write_split(root, split, count, **kwargs)
        if split == "val" and not inner_files:
            # Another process (simulated) completes the same dataset before this one installs its copy.
            monkeypatch.setattr(synthetic, "_write_split", real_write_split)
            generate_synthetic_dataset(out, seed=0, **TINY)
            inner_files.update(_all_files(out))

    monkeypatch.setattr(synthetic, "_write_split", write_split_while_another_process_finishes)
    generate_synthetic_dataset(out, seed=0, **TINY)
    assert inner_files and _all_files(out) == inner_files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="mine"):
        generate_synthetic_dataset(out, **TINY)
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs", [dict(num_train=0), dict(image_size=8), dict(max_objects=0), dict(seed=-1), dict(num_val=2.5)]
)
def test_invalid_parameters_raise(tmp_path: Path, kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(DatasetError, match=name):
        generate_synthetic_dataset(tmp_path / "x", **kwargs)


def test_json_is_valid_coco(tmp_path: Path) -> None:
    ds = generate_synthetic_dataset(tmp_path / "ds", seed=1, **TINY)
    assert ds.class_names == CLASS_NAMES
    for split in ("train", "val"):
        coco = COCO(str(ds.json_path(split)))
        assert sorted(coco.getCatIds()) == list(range(1, len(CLASS_NAMES) + 1))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
        images = coco.loadImgs(coco.getImgIds())
        assert sorted(img["id"] for img in images) == list(range(1, TINY[f"num_{split}"] + 1))
        for img in images:
            assert (img["width"], img["height"]) == (64, 64)
            with Image.open(ds.image_root(split) / img["file_name"]) as pil:
                assert pil.size == (64, 64) and pil.mode == "RGB"
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) > 0
        assert len({a["id"] for a in anns}) == len(anns)
        for a in anns:
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert a["iscrowd"] == 0 and a["area"] == pytest.approx(w * h)
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
    unlabeled = COCO(str(ds.unlabeled_json))
    assert len(unlabeled.getImgIds()) == 2 and unlabeled.getAnnIds() == []
    assert len(list(ds.image_root("unlabeled").glob("*.png"))) == 2
    with pytest.raises(DatasetError, match="unlabeled"):
        generate_synthetic_dataset(tmp_path / "no_unl", **dict(TINY, num_unlabeled=0)).image_root("unlabeled")


def _bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] + 1 - cols[0]), int(rows[-1] + 1 - rows[0])


def test_single_object_box_is_tight_on_a_flat_background() -> None:
    checked = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        scene = render_scene(rng, image_size=64, max_objects=1, noise_std=0.0, flat_background=True)
        if len(scene.boxes) == 0:
            continue
        background = scene.image[scene.owner < 0][0]
        differs = (scene.image != background).any(axis=-1)
        assert differs.any()
        assert tuple(scene.boxes[0]) == _bbox_of(differs)
        checked += 1
    assert checked >= 20


def test_boxes_are_tight_and_occlusion_is_bounded() -> None:
    num_objects = 0
    for seed in range(40):
        scene = render_scene(np.random.default_rng(seed), image_size=96, max_objects=6)
        assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
        assert len(scene.boxes) == len(scene.labels) == len(scene.drawn_area)
        for j, box in enumerate(scene.boxes):
            visible = scene.owner == j
            assert tuple(box) == _bbox_of(visible)
            assert visible.sum() >= (1.0 - MAX_OCCLUDED_FRACTION) * scene.drawn_area[j] - 1e-9
        num_objects += len(scene.boxes)
    assert num_objects > 60


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_shape_masks_fill_their_frame(name: str) -> None:
    rng = np.random.default_rng(0)
    for w, h in [(6, 6), (7, 11), (40, 30), (128, 100)]:
        mask = shape_mask(name, w, h, rng)
        assert mask.shape == (h, w)
        bx, by, bw, bh = _bbox_of(mask)
        # The rasterised outline may miss a border row or column by one pixel at most.
        assert bx <= 1 and by <= 1 and bw >= w - 2 and bh >= h - 2
        area = mask.sum() / (w * h)
        assert 0.2 < area <= 1.0


def test_object_side_law_covers_coco_buckets() -> None:
    rng = np.random.default_rng(0)
    sides = np.array([sample_object_side(rng, 256) for _ in range(4000)])
    assert sides.min() >= 6.0 and sides.max() <= 128.0
    shares = [(sides < 32).mean(), ((sides >= 32) & (sides < 96)).mean(), (sides >= 96).mean()]
    assert shares == pytest.approx([0.40, 0.35, 0.25], abs=0.03)
    # Log-uniform inside a bucket: the median of log(side) is the middle of the log range.
    small = np.log(sides[sides < 32])
    assert np.median(small) == pytest.approx((math.log(6) + math.log(32)) / 2, abs=0.08)
    # A small image drops the buckets that do not fit: everything stays in [6, size / 2].
    tiny = np.array([sample_object_side(rng, 48) for _ in range(500)])
    assert tiny.min() >= 6.0 and tiny.max() <= 24.0


def test_generated_dataset_has_small_medium_and_large_objects(tmp_path: Path) -> None:
    ds = generate_synthetic_dataset(tmp_path / "ds", num_train=40, num_val=1, image_size=256, seed=0)
    anns = json.loads(ds.train_json.read_text())["annotations"]
    area = np.array([a["area"] for a in anns])
    sides = np.array([a["bbox"][2:] for a in anns])
    assert len(anns) >= 80
    for share in [(area < 32**2).mean(), ((area >= 32**2) & (area < 96**2)).mean(), (area >= 96**2).mean()]:
        assert share >= 0.12
    assert sides.min() >= 4 and sides.max() <= 128


def test_empty_images_are_rare_but_present_and_colours_do_not_reveal_the_class() -> None:
    from msadkit.data.synthetic_scenes import EMPTY_IMAGE_PROB

    # What the generator guarantees: an image is empty exactly when its draw of "no objects"
    # (probability EMPTY_IMAGE_PROB) comes up, since the first object always finds a place; every
    # object's class is uniform; and every class draws its colour from one law. The counts below are
    # checked against those laws within Z standard deviations: a correct generator lies well inside
    # (these seeds: within 2), a probability of 0.06 instead of 0.04, or a class whose mean colour
    # moves by 15 of 255 in one channel, lies outside.
    scenes, z = 3000, 4.0
    empty = 0
    colours: dict[int, list[np.ndarray]] = {k: [] for k in range(len(CLASS_NAMES))}
    for seed in range(scenes):
        scene = render_scene(np.random.default_rng(seed), image_size=48, max_objects=3, noise_std=0.0)
        empty += len(scene.boxes) == 0
        for j, label in enumerate(scene.labels):
            colours[int(label)].append(scene.image[scene.owner == j][0].astype(np.float64))
    expected, spread = scenes * EMPTY_IMAGE_PROB, math.sqrt(scenes * EMPTY_IMAGE_PROB * (1 - EMPTY_IMAGE_PROB))
    assert abs(empty - expected) <= z * spread, (empty, expected, spread)

    counts = np.array([len(colours[k]) for k in colours], dtype=np.float64)
    total = counts.sum()
    share = 1.0 / len(CLASS_NAMES)
    assert np.abs(counts / total - share).max() <= z * math.sqrt(share * (1 - share) / total), counts

    pooled_std = np.concatenate([np.array(colours[k]) for k in colours]).std(axis=0)  # per channel
    for k in colours:
        # A class's mean colour against the mean of all other objects, in standard errors.
        others = np.concatenate([np.array(colours[j]) for j in colours if j != k])
        standard_error = pooled_std * math.sqrt(1.0 / counts[k] + 1.0 / len(others))
        deviation = np.abs(np.mean(colours[k], axis=0) - others.mean(axis=0))
        assert (deviation <= z * standard_error).all(), (CLASS_NAMES[k], deviation, standard_error)
