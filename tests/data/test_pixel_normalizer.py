"""The model's pixel convention: raw uint8 batches normalised on the device (rgb and bgr)."""

from __future__ import annotations

import pytest
import torch

from msadkit.config import load_config
from msadkit.data import collate_detection
from msadkit.errors import ConfigError, InputError
from msadkit.modeling.image_batch import PixelNormalizer, check_image_batch, pixel_normalizer, to_model_input

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
DETECTRON2_BGR_MEAN = (103.53, 116.28, 123.675)


def _one_pixel(r: int, g: int, b: int) -> torch.Tensor:
    return torch.tensor([r, g, b], dtype=torch.uint8).view(1, 3, 1, 1)


def test_rgb_pixel_normalised_by_hand() -> None:
    out = PixelNormalizer(IMAGENET_MEAN, IMAGENET_STD, "rgb")(_one_pixel(10, 200, 255))
    assert out.dtype == torch.float32
    # (10 - 123.675) / 58.395, (200 - 116.28) / 57.12, (255 - 103.53) / 57.375
    expected = [-1.946656391814368, 1.4656862745098038, 2.640000000000000]
    assert out.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_bgr_reverses_channels_then_subtracts_detectron2_means() -> None:
    out = PixelNormalizer(DETECTRON2_BGR_MEAN, (1.0, 1.0, 1.0), "bgr")(_one_pixel(10, 200, 255))
    # channel 0 is blue: 255 - 103.53; 1 green: 200 - 116.28; 2 red: 10 - 123.675.
    assert out.flatten().tolist() == pytest.approx([151.47, 83.72, -113.675], rel=1e-6)


def test_inverse_gives_back_rgb_pixels() -> None:
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    for pixels in (PixelNormalizer(IMAGENET_MEAN, IMAGENET_STD), PixelNormalizer(DETECTRON2_BGR_MEAN, (1, 1, 1), "bgr")):
        assert torch.allclose(pixels.inverse(pixels(images)), images.float(), atol=1e-3)
        assert torch.allclose(pixels.inverse(pixels(images)[0]), images[0].float(), atol=1e-3)


def test_padding_is_zero_after_normalising_as_when_padding_a_normalised_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (3, 5, 7), generator=gen, dtype=torch.uint8)
    b = torch.randint(0, 256, (3, 33, 10), generator=gen, dtype=torch.uint8)
    pixels = PixelNormalizer(IMAGENET_MEAN, IMAGENET_STD)
    batch = collate_detection([(a, {}), (b, {})], size_divisibility=32)
    out = pixels(batch.images, batch.image_sizes)
    # The former data path: normalise each image as float, then pad with zeros.
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    before = collate_detection([((a.float() - mean) / std, {}), ((b.float() - mean) / std, {})], size_divisibility=32)
    assert out.shape == before.images.shape == (2, 3, 64, 32)
    assert torch.allclose(out, before.images, atol=1e-6)
    assert out[0, :, 5:, :].abs().sum() == 0 and out[0, :, :, 7:].abs().sum() == 0


def test_to_model_input_moves_normalises_and_sets_memory_format() -> None:
    image = torch.randint(0, 256, (3, 6, 9), dtype=torch.uint8)
    batch = collate_detection([(image, {"boxes": torch.zeros(0, 4)})], size_divisibility=8)
    pixels = PixelNormalizer(IMAGENET_MEAN, IMAGENET_STD)
    out = to_model_input(batch, pixels, "cpu", channels_last=True)
    assert out.images.dtype == torch.float32 and out.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out.images, pixels(batch.images, batch.image_sizes))
    assert batch.images.dtype == torch.uint8  # the loader's batch is left as it was
    check_image_batch(out.images)  # what detectors accept


def test_config_keys_and_bad_values() -> None:
    config = load_config("fcos_demo", ["model.pixel_format=bgr", "model.pixel_mean=[103.53, 116.28, 123.675]",
                                       "model.pixel_std=[1, 1, 1]"])
    pixels = pixel_normalizer(config)
    assert pixels.pixel_format == "bgr" and pixels.mean.flatten().tolist() == pytest.approx(DETECTRON2_BGR_MEAN)
    assert not pixels.state_dict()  # never part of a checkpoint
    with pytest.raises(ConfigError, match="model.pixel_format"):
        pixel_normalizer(load_config("fcos_demo", ["model.pixel_format=yuv"]))
    with pytest.raises(ConfigError, match="model.pixel_std"):
        PixelNormalizer(IMAGENET_MEAN, (1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="model.pixel_mean"):
        PixelNormalizer((1.0, 2.0), IMAGENET_STD)


def test_bad_batches_raise_input_error() -> None:
    pixels = PixelNormalizer(IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(InputError, match="uint8"):
        pixels(torch.zeros(1, 3, 4, 4))
    with pytest.raises(InputError, match="N, 3, H, W"):
        pixels(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(InputError, match="2 image sizes for 1 images"):
        pixels(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), [(4, 4), (4, 4)])
    with pytest.raises(InputError, match="PixelNormalizer first"):
        check_image_batch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "FCOS")
