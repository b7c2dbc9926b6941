"""A pseudo-label file without a single box: warned about when written, refused when trained on.

A weak teacher (a short run, a high ``--score-threshold``) can score no detection above the
threshold; the file is then valid COCO but the SAD run would train its "pseudo-labeled" batches on
pure background without a word. ``msadkit pseudo-label`` warns, and a SAD run stops with the same
message unless ``data.pseudo_labels_allow_empty`` is true.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from msadkit.errors import ConfigError, DatasetError
from msadkit.utils.run_folder import EVAL_NAME

__all__ = ["pseudo_label_box_count", "teacher_ap", "empty_pseudo_labels_message", "refuse_empty_pseudo_labels"]


def pseudo_label_box_count(json_path: str | os.PathLike) -> tuple[int, float | None]:
    """``(number of boxes, score threshold)`` of a pseudo-label json; the threshold is None when
    the file does not record it (``info.score_threshold``, written by ``msadkit pseudo-label``)."""
    path = Path(json_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"pseudo-label file {path} cannot be read as JSON: {exc}") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise DatasetError(f"pseudo-label file {path} has no 'annotations' list")
    info = data.get("info")
    threshold = info.get("score_threshold") if isinstance(info, dict) else None
    return len(annotations), threshold if isinstance(threshold, (int, float)) else None


def teacher_ap(teacher: str | os.PathLike | None) -> tuple[float, Path] | None:
    """``(AP, eval.json path)`` of a teacher run folder (or of the folder of its weights file);
    None when there is no readable AP."""
    if not teacher:
        return None
    folder = Path(teacher).expanduser()
    path = (folder if folder.is_dir() else folder.parent) / EVAL_NAME
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("AP")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value), path


def empty_pseudo_labels_message(
    json_path: str | os.PathLike, score_threshold: float | None, teacher: str | os.PathLike | None
) -> str:
    """One sentence naming the file, the score threshold and the teacher's AP, and what to change."""
    threshold = f" scored >= {score_threshold:g}" if score_threshold is not None else " passed the score threshold"
    known = teacher_ap(teacher)
    if known is not None:
        who = f"the teacher {teacher} (AP {known[0]:.1f} in {known[1]})"
    elif teacher:
        who = f"the teacher {teacher} (no AP in its {EVAL_NAME})"
    else:
        who = "the teacher"
    return (
        f"pseudo-label file {json_path} holds no box: no detection of {who}{threshold}; "
        "lower --score-threshold or train the teacher longer"
    )


def refuse_empty_pseudo_labels(config: dict[str, Any], json_path: str | os.PathLike) -> None:
    """Stop a SAD run whose pseudo-label file holds no box, unless ``data.pseudo_labels_allow_empty``.

    Raises:
        ConfigError: the file holds no annotation and empty files are not allowed.
    """
    if config["data"].get("pseudo_labels_allow_empty"):
        return
    count, threshold = pseudo_label_box_count(json_path)
    if count == 0:
        teacher = config.get("distill", {}).get("teacher")
        raise ConfigError(
            empty_pseudo_labels_message(json_path, threshold, teacher)
            + " (set data.pseudo_labels_allow_empty=true to train on it anyway)"
        )
