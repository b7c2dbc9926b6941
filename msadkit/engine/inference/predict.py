"""Detections of a finished run on one's own images: drawn PNGs and a COCO results json (``msadkit predict``).

The detections come from :func:`msadkit.engine.inference.detect.detect_images`, the inference
``msadkit pseudo-label`` runs: the run's test resize, batching, padding, its model (an MSAD teacher's
chosen branch, a low-resolution student's 0.5x input path) and boxes mapped back to original pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageColor
from torch import nn

from msadkit.data.images import IMAGE_SUFFIXES, decode_rgb, find_image_files, read_image
from msadkit.engine.inference.detect import detect_images, run_categories
from msadkit.errors import ConfigError, DatasetError, InputError
from msadkit.modeling.loading import load_run_model, read_run_checkpoint
from msadkit.utils.atomic import atomic_write
from msadkit.utils.run_folder import write_json_atomic

__all__ = ["DETECTIONS_NAME", "PredictSummary", "load_predictor", "collect_image_files", "predict_images"]

DETECTIONS_NAME = "detections.json"
# One colour per category id (cycled), so classes stay apart in the drawn images.
_PALETTE = ("red", "lime", "blue", "yellow", "magenta", "cyan", "orange", "white")


@dataclass
class PredictSummary:
    """What :func:`predict_images` did: drawn files, detections kept and the images it could not read."""

    out_dir: Path
    drawn: list[Path] = field(default_factory=list)
    num_detections: int = 0
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def load_predictor(
    run: str | os.PathLike, *, branch: str | None = None, device: torch.device | str = "cpu", argument: str = "RUN"
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, config)`` of a finished run in eval mode; ``branch`` picks an MSAD teacher's branch.

    Raises:
        CheckpointError: the run folder has no weights (an unfinished run) or they do not fit.
        ConfigError: ``branch`` for a model that is not an MSAD teacher.
    """
    overrides = None
    if branch is not None:
        config, _, _ = read_run_checkpoint(run, argument=argument, require_weights=False)
        if config["model"]["arch"] != "msad_teacher":
            raise ConfigError(
                f"--branch {branch}: only an MSAD teacher has branches; {run} is a {config['model']['arch']} run"
            )
        overrides = {"model": {"msad": {"eval_branch": branch}}}
    return load_run_model(run, overrides=overrides, device=device, argument=argument)


def collect_image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders by their image files (sorted, not recursive).

    Raises:
        InputError: nothing given, a path that does not exist, a folder without image files, or
            two images whose drawn PNGs would get the same name.
    """
    if not inputs:
        raise InputError("IMAGES: give at least one image file or folder")
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = find_image_files(path)
            if not found:
                raise InputError(f"IMAGES {item}: the folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"IMAGES {item}: no such image file or folder")
    by_output: dict[str, Path] = {}
    for path in files:
        other = by_output.setdefault(path.stem + ".png", path)
        if other.resolve() != path.resolve():
            raise InputError(
                f"IMAGES: {other} and {path} would both be drawn as {path.stem}.png; "
                "predict them into separate --out folders"
            )
    return list(by_output.values())  # an image named twice is predicted once


def _check_readable(files: Sequence[Path]) -> tuple[dict[int, Path], list[dict[str, Any]], list[tuple[Path, str]]]:
    """``(path of each image id, records, unreadable)``: image records ``{"id", "file_name", "width",
    "height"}`` (displayed size) of the files that decode, and the others with the reason."""
    paths, records, unreadable = {}, [], []
    for path in files:
        try:
            # Decoded, not only its header read: a truncated file has an intact header, and found
            # later, inside the batched detection, it would stop the whole run instead of being skipped.
            width, height = read_image(path).size
        except DatasetError as exc:
            unreadable.append((path, str(exc)))
            continue
        paths[len(records) + 1] = path
        records.append({"id": len(records) + 1, "file_name": str(path.absolute()), "width": width, "height": height})
    return paths, records, unreadable


def _relative_luminance(color: str) -> float:
    """WCAG 2 relative luminance of a colour name, 0 (black) to 1 (white)."""

    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    red, green, blue = ImageColor.getrgb(color)[:3]
    return 0.2126 * linear(red) + 0.7152 * linear(green) + 0.0722 * linear(blue)


def label_text_color(color: str) -> str:
    """``"black"`` or ``"white"``: the text colour that contrasts more (WCAG contrast ratio) with a
    label filled with ``color`` — light text on dark boxes, dark text on light ones."""
    luminance = _relative_luminance(color)
    on_white = 1.05 / (luminance + 0.05)
    on_black = (luminance + 0.05) / 0.05
    return "black" if on_black >= on_white else "white"


def _draw(path: Path, detections: list[dict[str, Any]], names: dict[int, str], out: Path) -> Path:
    """Write ``path`` with its detections drawn (class name and score) as a PNG at ``out``, atomically.

    Boxes are drawn from the lowest score to the highest, so where boxes and labels overlap the
    higher-scoring one is on top. A label sits on a band of its box's colour, its text black or
    white, whichever reads better on that colour.
    """
    from torchvision.utils import draw_bounding_boxes

    image = decode_rgb(path)
    if detections:
        # sorted is stable: equal scores keep the order they came in.
        ordered = sorted(detections, key=lambda d: d["score"])
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in ordered)])
        labels = [f"{names[d['category_id']]} {d['score']:.2f}" for d in ordered]
        colors = [_PALETTE[d["category_id"] % len(_PALETTE)] for d in ordered]
        image = draw_bounding_boxes(
            image,
            boxes,
            labels=labels,
            colors=colors,
            width=2,
            fill_labels=True,
            label_colors=[label_text_color(color) for color in colors],
        )
    with atomic_write(out, "wb") as handle:
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(handle, format="PNG")
    return out


def predict_images(
    model: nn.Module,
    config: dict[str, Any],
    images: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    score_threshold: float = 0.5,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    progress: bool = False,
) -> PredictSummary:
    """Detect objects on image files and write ``out_dir/<name>.png`` per image and ``out_dir/detections.json``.

    ``detections.json`` is a COCO results list, one entry per detection scoring at least
    ``score_threshold``: ``{"image_file", "image_id", "category_id", "bbox": [x, y, w, h], "score"}``
    with boxes in original pixels. An image that cannot be decoded is reported in the summary and
    skipped; the others are still processed.

    Args:
        model: the run's detector, weights loaded.
        config: its config (test sizes, pixel convention, training categories).
        images: image files and folders.
        out_dir: the folder to write (created).
        score_threshold: minimum score of a kept detection, in [0, 1].
        device: where the model runs.
        batch_size: images per forward pass (default ``trainer.eval_batch_size``).
        progress: show a progress bar.

    Raises:
        ConfigError: a score threshold outside [0, 1].
        InputError: no images, ``out_dir`` cannot be written or would overwrite an input image, or
            no image is readable.
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ConfigError(f"--score-threshold must lie in [0, 1], got {score_threshold}")
    files = collect_image_files(images)
    out = Path(out_dir).expanduser()
    overwritten = [p for p in files if (out / f"{p.stem}.png").resolve() == p.resolve()]
    if overwritten:
        raise InputError(
            f"--out {out_dir}: the drawn image would replace the input {overwritten[0]}; choose another folder"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out_dir}: cannot create the folder: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"--out {out_dir}: the folder is not writable")
    sources, records, unreadable = _check_readable(files)
    summary = PredictSummary(out_dir=out, unreadable=unreadable)
    if not records:
        names = ", ".join(str(p) for p, _ in unreadable)
        raise InputError(f"IMAGES: none of the images can be read ({names})")
    categories = run_categories(config)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories}
    results = detect_images(
        model, config, records, Path.cwd(), categories, device=device, batch_size=batch_size, progress=progress
    )
    kept: dict[int, list[dict[str, Any]]] = {record["id"]: [] for record in records}
    for result in results:
        if result["score"] >= score_threshold:
            kept[result["image_id"]].append(result)
    entries = []
    for record in records:
        path = sources[record["id"]]
        detections = sorted(kept[record["id"]], key=lambda d: -d["score"])
        for d in detections:
            entries.append(
                {
                    "image_file": str(path),
                    "image_id": record["id"],
                    "category_id": int(d["category_id"]),
                    "bbox": [float(v) for v in d["bbox"]],
                    "score": float(d["score"]),
                }
            )
        summary.drawn.append(_draw(path, detections, names, out / f"{path.stem}.png"))
    write_json_atomic(out / DETECTIONS_NAME, entries)
    summary.num_detections = len(entries)
    return summary
