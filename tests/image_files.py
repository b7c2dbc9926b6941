"""Image files as cameras and datasets write them, made by the tests: EXIF-rotated photos, 16-bit
PNGs, truncated JPEGs, animated GIFs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """``(H, W, C)`` pixels as a viewer shows a file that stores ``stored`` with this EXIF orientation
    (the EXIF specification's eight cases, written out independently of PIL)."""
    return {
        1: lambda a: a,
        2: np.fliplr,
        3: lambda a: np.rot90(a, 2),
        4: np.flipud,
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise
        7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),  # 90 degrees counter-clockwise
    }[orientation](stored).copy()


def stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores so that a viewer applying ``orientation`` shows ``upright``."""
    inverse = {6: 8, 8: 6}.get(orientation, orientation)  # the other six are their own inverse
    return displayed(upright, inverse)


def save_with_orientation(path: Path, stored: np.ndarray, orientation: int, **options) -> Path:
    """``stored`` (uint8 ``(H, W, 3)``) saved with an EXIF orientation tag; the format follows the suffix."""
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[ORIENTATION_TAG] = orientation
    if path.suffix.lower() == ".webp":
        options.setdefault("lossless", True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        options.setdefault("quality", 95)
    image.save(path, exif=exif, **options)
    return path


def write_png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit PNG of ``values`` (uint16 ``(H, W)`` grey or ``(H, W, 3)`` RGB), written chunk by chunk
    because PIL writes 16-bit grey only."""
    values = np.asarray(values, dtype=np.uint16)
    if values.ndim == 2:
        image = Image.fromarray(values)
        assert image.mode == "I;16"
        image.save(path)
        return path
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def rescaled(values: np.ndarray) -> np.ndarray:
    """16-bit values rescaled to 8 bits, full range kept: ``round(v * 255 / 65535)``."""
    return np.rint(np.asarray(values, dtype=np.float64) * 255.0 / 65535.0).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def write_truncated_jpeg(path: Path, pixels: np.ndarray, keep: float | int = 0.5) -> Path:
    """A JPEG of ``pixels`` cut short: ``keep`` is the fraction (float) or the number of bytes (int) kept."""
    data = jpeg_bytes(pixels)
    size = int(len(data) * keep) if isinstance(keep, float) else int(keep)
    path.write_bytes(data[:size])
    return path


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``(kind, whole chunk bytes)`` of a PNG file's bytes, in order."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        end = offset + 12 + length
        chunks.append((data[offset + 4 : offset + 8], data[offset:end]))
        offset = end
    return chunks


def move_exif_after_pixels(path: Path) -> Path:
    """Rewrite a PNG so that its ``eXIf`` chunk follows the pixel data (``IDAT``), as some writers place it."""
    data = path.read_bytes()
    chunks = png_chunks(data)
    exif = [c for kind, c in chunks if kind == b"eXIf"]
    assert len(exif) == 1
    rest = [c for kind, c in chunks if kind not in (b"eXIf", b"IEND")]
    path.write_bytes(data[:8] + b"".join(rest) + exif[0] + chunks[-1][1])
    return path
