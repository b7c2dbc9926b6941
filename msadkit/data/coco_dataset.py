"""A COCO-format detection dataset that checks its annotation file thoroughly up front."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from msadkit.data.images import read_image
from msadkit.errors import DatasetError

__all__ = ["CocoDetectionDataset", "SampleError", "Transform", "size_mismatch"]

Transform = Callable[[Tensor, dict[str, Any]], tuple[Tensor, dict[str, Any]]]


class SampleError(DatasetError):
    """A sample that cannot be loaded; its one-line message survives a data-loader worker.

    torch re-raises a worker's exception in the training process as ``type(exc)(text)``, where
    ``text`` is "Caught SampleError in DataLoader worker process N." followed by the worker's whole
    traceback; this constructor takes the original message back from that traceback's last line.
    """

    def __init__(self, message: str) -> None:
        first_line, _, rest = message.partition("\n")
        marker = f"{type(self).__name__}: "
        if first_line.startswith("Caught ") and "worker" in first_line and marker in rest:
            last_line = rest.rstrip().rsplit("\n", 1)[-1]
            message = last_line.split(marker, 1)[1] if marker in last_line else message
        super().__init__(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def size_mismatch(
    displayed: tuple[int, int], stored: tuple[int, int], orientation: int, json_size: tuple[Any, Any]
) -> str | None:
    """What is wrong with an annotation's ``(height, width)``, or None if it fits the image.

    Sizes are compared in the displayed frame (EXIF orientation applied), where boxes are. A json
    written from the stored pixels of a rotated photo has width and height swapped; the message
    says so, because the boxes of such a json are in the stored frame too.

    Args:
        displayed: ``(width, height)`` of the decoded image, as displayed.
        stored: ``(width, height)`` of its pixels as stored in the file.
        orientation: the EXIF orientation that turned ``stored`` into ``displayed``.
        json_size: the annotation's ``(height, width)``; None entries are not checked.
    """
    width, height = displayed
    json_h, json_w = json_size
    if (json_h is None or json_h == height) and (json_w is None or json_w == width):
        return None
    text = f"is {height}x{width} (h x w) as displayed but the annotation says {json_h}x{json_w}"
    stored_w, stored_h = stored
    if orientation != 1 and (stored_h, stored_w) != (height, width):
        if (json_h, json_w) == (stored_h, stored_w):
            reason = "the annotation has the stored size, so its boxes are likely in the unrotated frame"
        else:
            reason = "annotations are in the displayed frame"
        text += f" (its EXIF orientation {orientation} turns the stored {stored_h}x{stored_w} pixels; {reason})"
    return text


class CocoDetectionDataset(torch.utils.data.Dataset):
    """Images and boxes from a COCO detection json.

    Everything that can be checked without decoding images is checked in the constructor, and the
    first problem found raises one :class:`DatasetError` naming the file and the faulty entry. An
    annotation whose ``bbox`` has a width or height ``<= 0`` is an error (not silently dropped), so
    a broken conversion script is noticed at once. Image files are only decoded in
    :meth:`__getitem__`; an undecodable file then raises :class:`DatasetError` naming it.

    Boxes are clipped to the image when loaded; a box that lies entirely outside its image is
    dropped. Crowd annotations (``iscrowd: 1``) are left out of the targets when ``skip_crowd``.

    Attributes:
        coco_json_path: the annotation file (evaluation loads it with pycocotools).
        image_root: the folder that image ``file_name`` entries are relative to.
        category_ids: sorted COCO category ids; contiguous label ``i`` is ``category_ids[i]``.
        class_names: category names in the same order.
        image_ids: COCO image ids in the order of the json's ``images`` list (dataset index order).
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike,
        *,
        transform: Transform | None = None,
        skip_crowd: bool = True,
    ) -> None:
        self.coco_json_path = Path(json_path)
        self.image_root = Path(image_root)
        self.transform = transform
        self.skip_crowd = skip_crowd

        if not self.coco_json_path.is_file():
            raise DatasetError(f"annotation file {self.coco_json_path} does not exist")
        if not self.image_root.is_dir():
            raise DatasetError(
                f"image folder {self.image_root} (for annotation file {self.coco_json_path}) does not exist"
            )
        data = self._read_json()
        categories = self._parse_categories(data["categories"])
        self.category_ids: list[int] = sorted(categories)
        self.class_names: list[str] = [categories[c] for c in self.category_ids]
        self._label_of = {c: i for i, c in enumerate(self.category_ids)}

        self._images = self._parse_images(data["images"])
        self.image_ids: list[int] = [img["id"] for img in self._images]
        self._boxes, self._labels = self._parse_annotations(data["annotations"])

    # ----------------------------------------------------------------------------- validation
    def _fail(self, what: str) -> DatasetError:
        return DatasetError(f"annotation file {self.coco_json_path}: {what}")

    def _read_json(self) -> dict[str, Any]:
        try:
            with open(self.coco_json_path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise self._fail(f"is not valid json: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._fail(f"cannot be read: {exc}") from None
        if not isinstance(data, dict):
            raise self._fail(f"top level is a {type(data).__name__}, expected an object")
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise self._fail(f'has no "{key}" list')
            if not isinstance(data[key], list):
                raise self._fail(f'"{key}" is a {type(data[key]).__name__}, expected a list')
        return data

    def _parse_categories(self, entries: list[Any]) -> dict[int, str]:
        categories: dict[int, str] = {}
        for k, cat in enumerate(entries):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")):
                raise self._fail(f"category #{k} has no integer id")
            if cat["id"] in categories:
                raise self._fail(f"category id {cat['id']} appears twice")
            categories[cat["id"]] = str(cat.get("name", cat["id"]))
        if not categories:
            raise self._fail('"categories" is empty')
        return categories

    def _parse_images(self, entries: list[Any]) -> list[dict[str, Any]]:
        images: list[dict[str, Any]] = []
        seen: set[int] = set()
        for k, img in enumerate(entries):
            if not isinstance(img, dict) or not _is_int(img.get("id")):
                raise self._fail(f"image #{k} has no integer id")
            image_id = img["id"]
            if image_id in seen:
                raise self._fail(f"image id {image_id} appears twice")
            seen.add(image_id)
            file_name = img.get("file_name")
            if not isinstance(file_name, str) or not file_name:
                raise self._fail(f"image id {image_id} has no file_name")
            size = (img.get("height"), img.get("width"))
            if any(v is not None and (not _is_int(v) or v <= 0) for v in size):
                raise self._fail(f"image id {image_id} has an invalid height/width {size}")
            path = self.image_root / file_name
            # One stat per image: a missing file is reported now, not hours into training.
            if not path.is_file():
                raise self._fail(f"image id {image_id}: image file {path} does not exist")
            images.append({"id": image_id, "path": path, "size": size})
        return images

    def _parse_annotations(self, entries: list[Any]) -> tuple[dict[int, list[list[float]]], dict[int, list[int]]]:
        boxes: dict[int, list[list[float]]] = {img["id"]: [] for img in self._images}
        labels: dict[int, list[int]] = {img["id"]: [] for img in self._images}
        for k, ann in enumerate(entries):
            if not isinstance(ann, dict):
                raise self._fail(f"annotation #{k} is a {type(ann).__name__}, expected an object")
            name = f"annotation id {ann['id']}" if "id" in ann else f"annotation #{k} (no id)"
            image_id = ann.get("image_id")
            if not _is_int(image_id) or image_id not in boxes:
                raise self._fail(f"{name} refers to image_id {image_id!r}, which is not in \"images\"")
            category_id = ann.get("category_id")
            if not _is_int(category_id) or category_id not in self._label_of:
                raise self._fail(f"{name} has category_id {category_id!r}, which is not in \"categories\"")
            bbox = ann.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                raise self._fail(f"{name} has bbox {bbox!r}; expected 4 finite numbers [x, y, w, h]")
            x, y, w, h = (float(v) for v in bbox)
            if w <= 0 or h <= 0:
                raise self._fail(f"{name} has bbox {bbox!r} with non-positive width or height")
            if self.skip_crowd and ann.get("iscrowd", 0):
                continue
            boxes[image_id].append([x, y, x + w, y + h])
            labels[image_id].append(self._label_of[category_id])
        return boxes, labels

    # ----------------------------------------------------------------------------- access
    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self._images)

    def load_image(self, index: int) -> Tensor:
        """Decode image ``index`` as uint8 RGB ``(3, H, W)``."""
        record = self._images[index]
        decoded = read_image(record["path"])
        problem = size_mismatch(decoded.size, decoded.stored_size, decoded.orientation, record["size"])
        if problem:
            raise DatasetError(
                f"image file {record['path']} {problem} for image id {record['id']} "
                f"in annotation file {self.coco_json_path}"
            )
        return decoded.pixels

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        """Image ``(3, H, W)`` uint8 RGB and its target.

        The target holds ``"boxes"`` ``(M, 4)`` float32 absolute ``(x1, y1, x2, y2)``, ``"labels"``
        ``(M,)`` int64 contiguous, ``"image_id"`` int, ``"orig_size"`` ``(h, w)`` and ``"scale"``
        (1.0, multiplied by resizing transforms).

        Raises:
            SampleError: the image cannot be decoded or does not match the annotation file.
        """
        try:
            image = self.load_image(index)
        except DatasetError as exc:
            raise SampleError(str(exc)) from None
        height, width = image.shape[-2:]
        image_id = self._images[index]["id"]
        boxes = torch.tensor(self._boxes[image_id], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor(self._labels[image_id], dtype=torch.int64).reshape(-1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0.0, float(width))
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0.0, float(height))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target: dict[str, Any] = {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "image_id": image_id,
            "orig_size": (int(height), int(width)),
            "scale": 1.0,
        }
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target
