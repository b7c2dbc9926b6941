"""The one image decoder of the kit: training data, ``predict``, pseudo-labelling and ``data check``.

Images are seen as a person sees them in a viewer:
- EXIF orientation is applied (a phone photo taken upright is decoded upright), so boxes and
  sizes are in the displayed frame; :func:`image_size` reads that displayed size from the header.
  The orientation is read once, from the header, for every format, so the size :func:`image_size`
  reports is always the shape :func:`decode_rgb` returns.
- 16-bit images (PNG ``I;16``, 16-bit RGB) are rescaled to 8 bits (``round(value / 257)``) instead
  of being clipped to 255 as PIL's ``convert("RGB")`` does.
- A file that cannot be decoded completely (truncated, corrupt, not an image) is refused with a
  :class:`~msadkit.errors.DatasetError` naming it, never decoded half-way.
- An animated GIF or WebP is its first frame, as in a file browser's thumbnail.
"""

from __future__ import annotations

import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from msadkit.errors import DatasetError

# torchvision 0.29 announces that its decoders move to TorchCodec; they are still the fastest
# uint8 JPEG/PNG path available without another dependency, so the notice is not repeated per image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated")

__all__ = ["IMAGE_SUFFIXES", "DecodedImage", "read_image", "decode_rgb", "image_size", "find_image_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# EXIF tag 0x0112; values 5-8 swap width and height.
_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
# Formats torchvision decodes itself (8-bit, and 16-bit PNG as uint16); the others go through PIL.
# MPO is the multi-picture JPEG some cameras write: torchvision decodes its first (main) picture.
_FAST_FORMATS = {"JPEG", "MPO", "PNG", "WEBP", "GIF"}
_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}
# Words of torchvision's errors for a file that ends early. Such a file is refused at once: the
# PIL fallback would decode it again only to fail too, or, where a program has set PIL's global
# ImageFile.LOAD_TRUNCATED_IMAGES, fill the missing part with grey without a word.
_TRUNCATION_WORDS = ("truncated", "incomplete", "premature end")


@dataclass(frozen=True)
class DecodedImage:
    """An image as displayed, and what decoding it did.

    Attributes:
        pixels: uint8 RGB ``(3, H, W)`` in the displayed frame.
        stored_size: ``(width, height)`` of the pixels as stored in the file, before orientation.
        orientation: the EXIF orientation applied (1 = none; 5-8 swap width and height).
        high_bit_depth: the file holds more than 8 bits per channel; ``pixels`` are rescaled.
    """

    pixels: Tensor
    stored_size: tuple[int, int]
    orientation: int
    high_bit_depth: bool

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` as displayed."""
        return int(self.pixels.shape[-1]), int(self.pixels.shape[-2])


def _png_exif_chunk(path: Path) -> bytes | None:
    """The data of a PNG's ``eXIf`` chunk, found by reading chunk headers only (no decoding)."""
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return None
            length, kind = struct.unpack(">I4s", header)
            if kind == b"eXIf":
                return handle.read(length)
            if kind == b"IEND":
                return None
            handle.seek(length + 4, 1)  # the data and its CRC


def _orientation(image: Image.Image) -> int:
    try:
        if image.format == "PNG" and "exif" not in image.info:
            # PIL's PNG getexif() decodes the whole image to look for an eXIf chunk after the pixel
            # data; reading the chunk headers finds it at the cost of a few seeks.
            data = _png_exif_chunk(Path(image.filename))
            if data is None:
                return 1
            exif = Image.Exif()
            exif.load(data)
        else:
            exif = image.getexif()
        value = int(exif.get(_ORIENTATION_TAG, 1))
    except Exception:  # a malformed EXIF block is ignored, as viewers do
        return 1
    return value if 1 <= value <= 8 else 1


def _sizes(image: Image.Image, orientation: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(stored, displayed)`` ``(width, height)``. PIL's TIFF reader already reports (and, when
    loading, produces) the displayed frame; every other reader reports the stored one."""
    width, height = image.size
    swapped = (height, width)
    if orientation not in _TRANSPOSING_ORIENTATIONS:
        return (width, height), (width, height)
    if image.format == "TIFF":
        return swapped, (width, height)
    return (width, height), swapped


def _high_bit_depth(image: Image.Image) -> bool:
    """Whether the file holds more than 8 bits per channel. PIL opens a 16-bit RGB PNG or TIFF
    as mode ``RGB``; only the tile's raw mode (``RGB;16B``) tells."""
    if image.mode not in _EIGHT_BIT_MODES:
        return True
    for tile in image.tile:
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            return True
    return False


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the image as displayed (EXIF orientation applied), from its header.

    Raises:
        DatasetError: the file is missing or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            return _sizes(image, _orientation(image))[1]
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


def _orient(pixels: Tensor, orientation: int) -> Tensor:
    """``(C, H, W)`` pixels turned from the stored to the displayed frame (PIL's exif_transpose)."""
    if orientation == 2:
        pixels = pixels.flip(-1)
    elif orientation == 3:
        pixels = pixels.flip(-1).flip(-2)
    elif orientation == 4:
        pixels = pixels.flip(-2)
    elif orientation == 5:
        pixels = pixels.transpose(-1, -2)
    elif orientation == 6:
        pixels = pixels.transpose(-1, -2).flip(-1)
    elif orientation == 7:
        pixels = pixels.transpose(-1, -2).flip(-1).flip(-2)
    elif orientation == 8:
        pixels = pixels.transpose(-1, -2).flip(-2)
    return pixels.contiguous()


def _decode_fast(path: Path) -> Tensor | None:
    """torchvision's uint8 RGB of the stored frame, or None where it cannot decode the file.

    Raises:
        DatasetError: the file ends early.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        # Orientation is applied by the caller for every format alike (torchvision's own applies
        # to JPEG and PNG only, so a rotated WebP would come out sideways).
        pixels = decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=False)
    except RuntimeError as exc:
        # The last line without the "file.cpp:171, " of torchvision's sources.
        message = re.sub(r"^.*\.(?:cpp|h):\d+,\s*", "", (str(exc).strip() or type(exc).__name__).splitlines()[-1])
        if any(word in message.lower() for word in _TRUNCATION_WORDS):
            raise DatasetError(f"image file {path} cannot be decoded: it is truncated ({message})") from None
        return None
    if pixels.ndim == 4:  # an animated GIF: every frame; the first is what a viewer shows first
        pixels = pixels[0]
    if pixels.dtype == torch.uint16:
        # round(v * 255 / 65535) in integers; v * 255 never ties at .5, as 65535 is odd.
        return ((pixels.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    return pixels if pixels.dtype == torch.uint8 else None


def read_image(path: str | Path) -> DecodedImage:
    """The image at ``path`` as displayed, with its stored size, orientation and bit depth.

    8-bit JPEG, PNG, WebP and GIF, and 16-bit PNG, go through torchvision's decoders straight into
    a tensor (no float copy in a data-loader worker); grayscale, palette, CMYK and RGBA become RGB
    (alpha dropped). Other formats (TIFF, BMP, 16-bit grayscale TIFF) go through PIL.

    Raises:
        DatasetError: the file is missing, truncated or cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            orientation = _orientation(image)
            stored, _ = _sizes(image, orientation)
            high = _high_bit_depth(image)
            pixels = None
            if image.format in _FAST_FORMATS and (image.mode in _EIGHT_BIT_MODES or image.format == "PNG"):
                pixels = _decode_fast(path)
                if pixels is not None:
                    pixels = _orient(pixels, orientation)
            if pixels is None:
                pixels = _decode_with_pil(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        if "truncat" in reason.lower():
            reason = f"it is truncated ({reason})"
        raise DatasetError(f"image file {path} cannot be decoded: {reason}") from None
    return DecodedImage(pixels=pixels, stored_size=stored, orientation=orientation, high_bit_depth=high)


def decode_rgb(path: str | Path) -> Tensor:
    """The image at ``path`` as displayed, uint8 RGB ``(3, H, W)`` (see :func:`read_image`).

    Raises:
        DatasetError: the file is missing, truncated or cannot be decoded.
    """
    return read_image(path).pixels


def find_image_files(folder: str | Path) -> list[Path]:
    """Files with an image suffix directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
