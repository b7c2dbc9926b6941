"""Every image of a COCO json decoded once, every problem listed in one report (``msadkit data check``,
``data.check_images``).

:class:`~msadkit.data.CocoDetectionDataset` checks what it can without decoding and stops at the
first problem; an image that is truncated, or whose json size was written before EXIF orientation,
is then found only when a data-loader worker reaches it, hours into training. This check decodes
every image with the kit's one decoder (:mod:`msadkit.data.images`, the frame training sees) and
reports all of: missing files, files that cannot be decoded (truncated, corrupt, not an image),
json sizes that differ from the displayed size, boxes outside the image, malformed annotations;
16-bit images are noted (they are rescaled to 8 bits, not a problem).
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from msadkit.data.coco_dataset import size_mismatch
from msadkit.data.images import read_image
from msadkit.errors import DatasetError

__all__ = ["ImageCheckReport", "check_images", "check_config_images"]

logger = logging.getLogger(__name__)

# A box may pass the image edge by this many pixels before it is reported: rounding in the tools
# that write COCO jsons puts edge boxes a fraction of a pixel outside.
EDGE_TOLERANCE = 1.0
# Problems quoted in the one-line error of data.check_images; the command lists them all.
_QUOTED = 3


@dataclass
class ImageCheckReport:
    """What :func:`check_images` found.

    Attributes:
        json_path: the annotation file.
        image_root: the folder its ``file_name`` entries are relative to.
        num_images: entries of its ``images`` list.
        problems: one line per problem (training would fail, or learn from wrong boxes).
        notes: one line per thing worth knowing that is not a problem (16-bit images).
    """

    json_path: Path
    image_root: Path
    num_images: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: the files, the counts."""
        return (
            f"annotation file {self.json_path}, images in {self.image_root}: {self.num_images} images, "
            f"{_count(len(self.problems), 'problem')}, {_count(len(self.notes), 'note')}"
        )

    def format(self) -> str:
        """The summary line, then every problem and every note, one per line."""
        lines = [self.summary()]
        lines += [f"problem: {text}" for text in self.problems]
        lines += [f"note: {text}" for text in self.notes]
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(json_path: Path) -> dict[str, Any]:
    """The json's top level; a file that is not a COCO json at all is an error, not a report."""
    if not json_path.is_file():
        raise DatasetError(f"annotation file {json_path} does not exist")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"annotation file {json_path}: is not valid json: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"annotation file {json_path}: cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f'annotation file {json_path}: expected a COCO json with an "images" list')
    if not isinstance(data.get("annotations", []), list):
        raise DatasetError(f'annotation file {json_path}: "annotations" is not a list')
    return data


@dataclass(frozen=True)
class _Facts:
    """What decoding an image found, without its pixels (cheap to send back from a worker process)."""

    size: tuple[int, int]
    stored_size: tuple[int, int]
    orientation: int
    high_bit_depth: bool


def _inspect(path: Path) -> _Facts | str:
    """The facts of the image at ``path``, or the one-line reason it cannot be decoded."""
    try:
        decoded = read_image(path)
    except DatasetError as exc:
        return str(exc)
    return _Facts(decoded.size, decoded.stored_size, decoded.orientation, decoded.high_bit_depth)


def _inspect_all(paths: list[Path], workers: int, progress: bool) -> Iterator[_Facts | str]:
    """:func:`_inspect` of every path, in order; ``workers`` processes decode side by side."""
    results: Iterable[_Facts | str]
    pool = ProcessPoolExecutor(workers) if workers > 0 and len(paths) > 1 else None
    try:
        if pool is None:
            results = map(_inspect, paths)
        else:
            results = pool.map(_inspect, paths, chunksize=max(1, min(64, len(paths) // (4 * workers))))
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(paths), desc="decode", unit="image")
        yield from results
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _box_problem(bbox: list[float], size: tuple[int, int]) -> str | None:
    """Why a ``[x, y, w, h]`` box does not fit a ``(width, height)`` image, or None."""
    width, height = size
    x1, y1, w, h = bbox
    x2, y2 = x1 + w, y1 + h
    where = f"the {height}x{width} (h x w) image"
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        return f"lies entirely outside {where} (training drops it)"
    past = max(-x1, -y1, x2 - width, y2 - height)
    if past > EDGE_TOLERANCE:
        return f"extends {past:g} px past the edge of {where} (training clips it)"
    return None


def check_images(
    json_path: str | os.PathLike, image_root: str | os.PathLike, *, workers: int = 0, progress: bool = False
) -> ImageCheckReport:
    """Decode every image a COCO json names, once, and report every problem found.

    Args:
        json_path: the annotation file.
        image_root: the folder its ``file_name`` entries are relative to.
        workers: processes decoding side by side (0: this process alone).
        progress: show a progress bar of the decoded images on standard error.

    Raises:
        DatasetError: the json cannot be read or is not a COCO json, or ``image_root`` is not a folder.
    """
    json_path, image_root = Path(json_path).expanduser(), Path(image_root).expanduser()
    data = _read_json(json_path)
    if not image_root.is_dir():
        raise DatasetError(f"image folder {image_root} (for annotation file {json_path}) does not exist")
    report = ImageCheckReport(json_path, image_root, num_images=len(data["images"]))
    images: dict[int, tuple[Path, tuple[Any, Any]]] = {}
    for k, entry in enumerate(data["images"]):
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        valid_id = isinstance(image_id, int) and not isinstance(image_id, bool)
        if not valid_id or not isinstance(file_name, str) or not file_name:
            report.problems.append(f"image #{k} needs an integer id and a file_name")
        elif image_id in images:
            report.problems.append(f"image id {image_id} appears twice")
        else:
            images[image_id] = (image_root / file_name, (entry.get("height"), entry.get("width")))
    boxes: dict[int, list[tuple[str, list[float]]]] = {image_id: [] for image_id in images}
    for k, ann in enumerate(data.get("annotations", [])):
        name = f"annotation id {ann['id']}" if isinstance(ann, dict) and "id" in ann else f"annotation #{k}"
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        bbox = ann.get("bbox") if isinstance(ann, dict) else None
        if not isinstance(image_id, int) or image_id not in boxes:
            report.problems.append(f"{name} refers to image_id {image_id!r}, which is not in \"images\"")
        elif not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            report.problems.append(
                f"{name} (image id {image_id}) has bbox {bbox!r}; expected 4 finite numbers [x, y, w, h]"
            )
        elif bbox[2] <= 0 or bbox[3] <= 0:
            report.problems.append(f"{name} (image id {image_id}) has bbox {bbox!r} with non-positive width or height")
        else:
            boxes[image_id].append((name, [float(v) for v in bbox]))
    present = []
    for image_id, (path, _) in images.items():
        if path.is_file():
            present.append(image_id)
        else:
            report.problems.append(f"image id {image_id}: image file {path} does not exist")
    for image_id, facts in zip(present, _inspect_all([images[i][0] for i in present], workers, progress)):
        path, json_size = images[image_id]
        if isinstance(facts, str):
            report.problems.append(f"image id {image_id}: {facts}")
            continue
        mismatch = size_mismatch(facts.size, facts.stored_size, facts.orientation, json_size)
        if mismatch:
            report.problems.append(f"image id {image_id}: image file {path} {mismatch}")
        if facts.high_bit_depth:
            report.notes.append(
                f"image id {image_id}: image file {path} has more than 8 bits per channel; it is rescaled to 8 bits"
            )
        for name, bbox in boxes[image_id]:
            problem = _box_problem(bbox, facts.size)
            if problem:
                report.problems.append(f"{name} (image id {image_id}, {path}): bbox {bbox} {problem}")
    return report


def check_config_images(config: dict[str, Any]) -> None:
    """With ``data.check_images``, check the training and validation sets (:func:`check_images`).

    Decoding runs in ``data.num_workers`` processes. Notes (16-bit images) are logged.

    Raises:
        DatasetError: either set has a problem; one line with the counts, the first problems and
            the ``msadkit data check`` command that lists them all.
    """
    if not config["data"].get("check_images"):
        return
    from msadkit.data.build import resolve_data_paths

    paths = resolve_data_paths(config)
    failures = []
    for split in ("train", "val"):
        workers = int(config["data"]["num_workers"])
        report = check_images(paths[f"{split}_json"], paths[f"{split}_images"], workers=workers)
        logger.info("data.check_images: %s", report.summary())
        if not report.ok:
            quoted = "; ".join(report.problems[:_QUOTED])
            more = len(report.problems) - _QUOTED
            failures.append(
                f"{_count(len(report.problems), 'problem')} in the {split} set ({quoted}"
                + (f"; and {more} more" if more > 0 else "")
                + f"); `msadkit data check {report.json_path} {report.image_root}` lists them all"
            )
    if failures:
        raise DatasetError("data.check_images: " + "; ".join(failures))
