"""The one image decoder of the kit: training data, ``predict``, pseudo-labelling and ``data check``.

Images are seen as a person sees them in a viewer:
- EXIF orientation is applied (a phone photo taken upright is decoded upright), so boxes and
  sizes are in the displayed frame; :func:`image_size` reads that displayed size from the header.
- 16-bit images (PNG ``I;16``, 16-bit RGB) are rescaled to 8 bits (``value / 257``) instead of
  being clipped to 255 as PIL's ``convert("RGB")`` does.
- A file that cannot be decoded completely (truncated, corrupt, not an image) is refused with a
  :class:`~msadkit.errors.DatasetError` naming it, never decoded half-way.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from msadkit.errors import DatasetError

# torchvision 0.29 announces that its decoders move to TorchCodec; they are still the fastest
# uint8 JPEG/PNG path available without another dependency, so the notice is not repeated per image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated")

__all__ = ["IMAGE_SUFFIXES", "decode_rgb", "image_size", "find_image_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# EXIF tag 0x0112; values 5-8 swap width and height.
_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# Formats torchvision decodes to uint8 itself (8-bit only; others go through PIL below).
_FAST_FORMATS = {"JPEG", "PNG", "WEBP", "GIF"}
_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a malformed EXIF block is ignored, as viewers do
        return 1


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the image as displayed (EXIF orientation applied), from its header.

    Raises:
        DatasetError: the file is missing or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if _orientation(image) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
            return width, height
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"image file {path} cannot be read: {type(exc).__name__}: {exc}") from None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit copy of a 16-bit (or 32-bit integer, PIL mode ``I``) array, full range kept."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f":
        return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    high = 65535.0 if array.max(initial=0) <= 65535 else float(np.iinfo(array.dtype).max)
    return np.clip(np.rint(array.astype(np.float64) * (255.0 / high)), 0, 255).astype(np.uint8)


def _decode_with_pil(image: Image.Image) -> Tensor:
    image.load()
    image = ImageOps.exif_transpose(image) or image
    if image.mode in _EIGHT_BIT_MODES:
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    else:
        # I;16, I;16B, I, F and 16-bit RGB: rescale to 8 bits, then grey to three channels.
        array = _to_uint8(np.asarray(image))
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        array = array[:, :, :3]
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).contiguous()


def decode_rgb(path: str | Path) -> Tensor:
    """The image at ``path`` as displayed, uint8 RGB ``(3, H, W)``.

    8-bit JPEG, PNG, WebP and GIF go through torchvision's decoders straight into a uint8 tensor
    (no float copy in a data-loader worker); grayscale, palette, CMYK and RGBA become RGB (alpha
    dropped). 16-bit images and other formats go through PIL and are rescaled to 8 bits.

    Raises:
        DatasetError: the file is missing, truncated or cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if image.format in _FAST_FORMATS and image.mode in _EIGHT_BIT_MODES:
                fast = _decode_fast(path)
                if fast is not None:
                    return fast
            return _decode_with_pil(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"image file {path} cannot be decoded: {type(exc).__name__}: {exc}") from None


def _decode_fast(path: Path) -> Tensor | None:
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        pixels = decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError:
        return None
    return pixels if pixels.dtype == torch.uint8 else None


def find_image_files(folder: str | Path) -> list[Path]:
    """Files with an image suffix directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
