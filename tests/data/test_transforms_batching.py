"""Tests of the detection transforms and of batch collation."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from msadkit.data import (
    Compose,
    DetectionBatch,
    DetectionCollator,
    RandomHorizontalFlip,
    ResizeShortSide,
    build_transforms,
    collate_detection,
)
from msadkit.errors import ConfigError, InputError


def _sample(h: int = 40, w: int = 60, *, boxes: list[list[float]] | None = None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
    box_list = [[4.0, 8.0, 20.0, 30.0], [30.0, 0.0, 60.0, 40.0]] if boxes is None else boxes
    target = {
        "boxes": torch.tensor(box_list, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.arange(len(box_list), dtype=torch.int64),
        "image_id": 5,
        "orig_size": (h, w),
        "scale": 1.0,
    }
    return image, target


# ----------------------------------------------------------------------------- resize
def test_resize_scales_short_side_and_boxes() -> None:
    image, target = _sample(40, 60)
    out, new = ResizeShortSide((20,), 1000, random=False)(image, target)
    assert out.shape == (3, 20, 30)
    assert torch.allclose(new["boxes"], target["boxes"] * 0.5)
    assert new["scale"] == pytest.approx(0.5)
    assert torch.equal(new["labels"], target["labels"]) and new["orig_size"] == (40, 60)
    # The input target is not modified.
    assert target["scale"] == 1.0 and target["boxes"][0, 2] == 20.0


def test_resize_halving_is_the_mean_of_2x2_blocks() -> None:
    image, target = _sample(8, 12)
    out, _ = ResizeShortSide((4,), 1000, random=False)(image, target)
    assert out.dtype == torch.uint8
    blocks = image.float().reshape(3, 4, 2, 6, 2).mean(dim=(2, 4))
    # uint8 stays uint8: torch's fixed-point uint8 kernel lands within one grey level of the mean.
    assert (out.float() - blocks).abs().max() <= 1.0


def test_uint8_resize_is_within_one_grey_level_of_the_float_resize() -> None:
    image, target = _sample(37, 53, seed=3)
    resize = ResizeShortSide((61,), 1000, random=False)
    out_uint8, _ = resize(image, target)
    out_float, _ = resize(image.float(), target)
    assert out_uint8.dtype == torch.uint8 and out_float.dtype == torch.float32
    assert out_uint8.shape == out_float.shape == (3, 61, round(53 * 61 / 37))
    assert (out_uint8.float() - out_float).abs().max() <= 1.0


def test_resize_respects_max_size_and_compounds_scale() -> None:
    image, target = _sample(40, 100)
    target["scale"] = 2.0
    out, new = ResizeShortSide((80,), 150, random=False)(image, target)
    # 80 / 40 = 2 would make the long side 200 > 150, so the factor is 150 / 100.
    assert out.shape == (3, 60, 150)
    assert new["scale"] == pytest.approx(3.0)
    assert torch.allclose(new["boxes"], target["boxes"] * 1.5)
    assert torch.allclose(new["boxes"] / (new["scale"] / target["scale"]), target["boxes"])


def test_resize_rounds_odd_sizes_and_keeps_aspect() -> None:
    image, target = _sample(33, 47)
    out, new = ResizeShortSide((20,), 1000, random=False)(image, target)
    assert out.shape == (3, 20, round(47 * 20 / 33))
    assert new["scale"] == pytest.approx(20 / 33)


def test_random_resize_draws_only_listed_short_sides() -> None:
    random.seed(0)
    resize = ResizeShortSide((16, 24, 32), 1000, random=True)
    image, target = _sample(20, 30)
    seen = {resize(image, target)[0].shape[-2] for _ in range(60)}
    assert seen == {16, 24, 32}
    fixed = ResizeShortSide((16, 24, 32), 1000, random=False)
    assert {fixed(image, target)[0].shape[-2] for _ in range(10)} == {16}


def test_resize_handles_images_without_boxes() -> None:
    image, target = _sample(10, 10, boxes=[])
    out, new = ResizeShortSide((20,), 100, random=False)(image, target)
    assert out.shape == (3, 20, 20) and new["boxes"].shape == (0, 4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ResizeShortSide((), 100),
        lambda: ResizeShortSide((0, 10), 100),
        lambda: ResizeShortSide((10,), -1),
        lambda: RandomHorizontalFlip(1.5),
    ],
)
def test_bad_transform_arguments_raise_config_error(make) -> None:
    with pytest.raises(ConfigError):
        make()


def test_transforms_reject_batched_images() -> None:
    _, target = _sample()
    with pytest.raises(InputError):
        ResizeShortSide((10,), 100)(torch.zeros(1, 3, 8, 8), target)


# ----------------------------------------------------------------------------- flip
def test_flip_mirrors_image_and_boxes() -> None:
    image, target = _sample(40, 60)
    out, new = RandomHorizontalFlip(prob=1.0)(image, target)
    assert torch.equal(out[:, :, 0], image[:, :, 59]) and torch.equal(out[:, 5, 13], image[:, 5, 46])
    expected = torch.tensor([[60 - 20.0, 8.0, 60 - 4.0, 30.0], [0.0, 0.0, 30.0, 40.0]])
    assert torch.equal(new["boxes"], expected)
    assert target["boxes"][0, 0] == 4.0  # input untouched
    back, restored = RandomHorizontalFlip(prob=1.0)(out, new)
    assert torch.equal(back, image) and torch.equal(restored["boxes"], target["boxes"])


def test_flip_probability() -> None:
    image, target = _sample(4, 6)
    out, new = RandomHorizontalFlip(prob=0.0)(image, target)
    assert out is image and new is target
    random.seed(1)
    flip = RandomHorizontalFlip(prob=0.5)
    flips = sum(not torch.equal(flip(image, target)[0], image) for _ in range(400))
    assert 150 < flips < 250


def test_flip_keeps_empty_boxes_empty() -> None:
    image, target = _sample(4, 6, boxes=[])
    _, new = RandomHorizontalFlip(prob=1.0)(image, target)
    assert new["boxes"].shape == (0, 4)


# ----------------------------------------------------------------------------- pipelines
def test_eval_pipeline_is_deterministic_and_train_pipeline_flips() -> None:
    image, target = _sample(40, 60)
    evaluate = build_transforms(train=False, short_sides=(20, 30), max_size=1000)
    out, new = evaluate(image, target)
    assert out.shape == (3, 20, 30)
    assert torch.allclose(new["boxes"], target["boxes"] * 0.5) and new["scale"] == pytest.approx(0.5)
    assert not any(isinstance(t, RandomHorizontalFlip) for t in evaluate.transforms)
    assert out.dtype == torch.uint8  # raw pixels: the model normalises on its device

    train = build_transforms(train=True, short_sides=(20,), max_size=1000, flip_prob=1.0)
    _, flipped = train(image, target)
    assert torch.allclose(flipped["boxes"][0], torch.tensor([20.0, 4.0, 28.0, 15.0]))
    composed = Compose([ResizeShortSide((20,), 1000, random=False), RandomHorizontalFlip(1.0)])
    assert torch.equal(composed(image, target)[0], train(image, target)[0])


# ----------------------------------------------------------------------------- batching
def test_collate_pads_with_zeros_to_the_divisibility() -> None:
    a = _sample(5, 7, seed=1)
    b = _sample(33, 10, boxes=[], seed=2)
    batch = collate_detection([a, b], size_divisibility=32)
    assert isinstance(batch, DetectionBatch) and len(batch) == 2
    assert batch.images.shape == (2, 3, 64, 32) and batch.images.dtype == torch.uint8
    assert batch.image_sizes == [(5, 7), (33, 10)]
    assert torch.equal(batch.images[0, :, :5, :7], a[0]) and torch.equal(batch.images[1, :, :33, :10], b[0])
    assert batch.images[0, :, 5:, :].abs().sum() == 0 and batch.images[0, :, :, 7:].abs().sum() == 0
    assert batch.images[1, :, 33:, :].abs().sum() == 0 and batch.images[1, :, :, 10:].abs().sum() == 0
    assert batch.targets[0] is a[1] and batch.targets[1] is b[1]


def test_collate_with_divisibility_one_and_exact_multiples() -> None:
    batch = collate_detection([_sample(5, 7), _sample(3, 9)], size_divisibility=1)
    assert batch.images.shape == (2, 3, 5, 9)
    batch = collate_detection([_sample(64, 32)], size_divisibility=32)
    assert batch.images.shape == (1, 3, 64, 32)
    batch = collate_detection([_sample(65, 32)], size_divisibility=256)
    assert batch.images.shape == (1, 3, 256, 256)


def test_collate_rejects_bad_input() -> None:
    with pytest.raises(InputError):
        collate_detection([])
    with pytest.raises(InputError, match="sample 1"):
        collate_detection([_sample(4, 4), (torch.zeros(4, 4), {})])
    with pytest.raises(InputError):
        DetectionCollator(0)


def test_batch_to_moves_every_tensor() -> None:
    batch = collate_detection([_sample(5, 7), _sample(4, 4, boxes=[])])
    moved = batch.to(torch.device("meta"))
    assert moved.images.device.type == "meta"
    for target in moved.targets:
        assert target["boxes"].device.type == "meta" and target["labels"].device.type == "meta"
        assert target["image_id"] == 5 and target["scale"] == 1.0
    assert moved.image_sizes == batch.image_sizes
    assert batch.images.device.type == "cpu"  # the original is unchanged


def test_collator_is_picklable_and_works_in_a_dataloader() -> None:
    collator = pickle.loads(pickle.dumps(DetectionCollator(16)))
    assert collator.size_divisibility == 16
    samples = [_sample(10, 20, seed=k) for k in range(3)]
    loader = torch.utils.data.DataLoader(samples, batch_size=2, collate_fn=collator)
    batches = list(loader)
    assert [b.images.shape for b in batches] == [(2, 3, 16, 32), (1, 3, 16, 32)]
    assert torch.equal(batches[1].images[0, :, :10, :20], samples[2][0])
