"""COCO-style box evaluation: detections to COCO results, AP metrics, a printable AP table.

The detectors return boxes in the pixel coordinates of the resized input batch with contiguous
class indices (see ``docs/architecture.md``). COCO evaluation needs boxes in the pixels of the
original image, as ``[x, y, w, h]``, with the dataset's own category ids;
:func:`msadkit.engine.inference.coco_results.detections_to_coco` does that conversion and
:func:`coco_evaluate` scores the result list against a COCO ground-truth json with pycocotools.

Conventions of the returned metrics:

- Values are in percent (0-100), keyed by :data:`AP_KEYS`.
- pycocotools reports -1 for a metric that has no ground truth at all (for example ``APs`` on a
  dataset without small objects). msadkit reports ``float("nan")`` there instead, so that a mean
  over runs or a table never mixes "-1 %" with real values; tables print NaN as "-".
- An empty detection list is a valid result (an untrained model): every metric that has ground
  truth is 0, nothing crashes.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from msadkit.errors import ConfigError, DatasetError, InputError, MsadkitError
from msadkit.utils.run_folder import AP_METRICS

__all__ = [
    "AP_KEYS",
    "coco_evaluate",
    "coco_evaluate_with_summary",
    "format_ap_table",
    "EVAL_BACKENDS",
    "check_backend",
    "read_gt_json",
    "check_results",
    "make_coco",
    "make_coco_pair",
]

AP_KEYS: tuple[str, ...] = AP_METRICS

EVAL_BACKENDS: tuple[str, ...] = ("pycocotools", "faster_coco_eval")
"""The COCO evaluators ``coco_evaluate`` can use; the second is the optional extra ``msadkit[fast-eval]``."""
_FAST_EVAL_MISSING = (
    "{argument}: backend 'faster_coco_eval' needs the optional package faster-coco-eval; install it with "
    "`pip install msadkit[fast-eval]` (or `pip install faster-coco-eval`), or use backend 'pycocotools'"
)
_IOU_TYPES = ("bbox", "segm")


def coco_evaluate(
    coco_gt_json: str | Path,
    coco_results: list[dict],
    *,
    iou_type: str = "bbox",
    backend: str = "pycocotools",
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """Score COCO result entries against a COCO ground-truth json.

    Args:
        coco_gt_json: path of the ground-truth annotation file (COCO format).
        coco_results: entries as returned by :func:`detections_to_coco`; may be empty.
        iou_type: ``"bbox"`` (or ``"segm"`` when results and ground truth carry masks).
        backend: ``"pycocotools"`` or ``"faster_coco_eval"`` (the optional extra
            ``msadkit[fast-eval]``: the same numbers, faster on large sets).
        image_ids: evaluate only these images (default: every image of the json). Images
            without a detection count as misses.

    Returns:
        ``{key: value}`` for every key of :data:`AP_KEYS`, in percent; NaN where the ground truth
        has no object for that metric (pycocotools' -1).

    Raises:
        DatasetError: the json is missing, does not parse or is not COCO-shaped.
        InputError: a result names an image or category that the json does not have, or lacks a key.
        MsadkitError: an unknown backend, or the optional backend is not installed.
    """
    metrics, _ = coco_evaluate_with_summary(
        coco_gt_json, coco_results, iou_type=iou_type, backend=backend, image_ids=image_ids
    )
    return metrics


def coco_evaluate_with_summary(
    coco_gt_json: str | Path,
    coco_results: list[dict],
    *,
    iou_type: str = "bbox",
    backend: str = "pycocotools",
    image_ids: Sequence[int] | None = None,
) -> tuple[dict[str, float], str]:
    """Like :func:`coco_evaluate`, and also return the evaluator's printed summary text.

    The evaluator prints its twelve-line summary to stdout; it is captured rather than printed so
    that notebooks and logs stay readable, and returned here for whoever wants it.
    """
    if iou_type not in _IOU_TYPES:
        raise InputError(f"coco_evaluate: iou_type {iou_type!r} is not supported; use one of {_IOU_TYPES}")
    coco_cls, eval_cls = _load_backend(backend)
    path = Path(coco_gt_json)
    dataset = read_gt_json(path)
    check_results(coco_results, dataset, path)
    selected = None
    if image_ids is not None:
        selected = sorted({int(i) for i in image_ids})
        unknown = sorted(set(selected) - {image["id"] for image in dataset["images"]})
        if unknown:
            raise InputError(f"coco_evaluate: image_ids {unknown[:10]} are not in {path}")

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        gt, dt = make_coco_pair(coco_cls, dataset, coco_results)
        # faster-coco-eval prints its summary through a logger by default; handing it print puts the
        # summary table into the captured text as with pycocotools (it adds two AR lines).
        extra = {"print_function": print} if backend == "faster_coco_eval" else {}
        evaluator = eval_cls(gt, dt, iou_type, **extra)
        if selected is not None:
            evaluator.params.imgIds = selected
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[: len(AP_KEYS)]]
    metrics = {key: (math.nan if value < 0 else 100.0 * value) for key, value in zip(AP_KEYS, stats)}
    return metrics, captured.getvalue()


def format_ap_table(rows: Mapping[str, Mapping[str, float]] | Mapping[str, float]) -> str:
    """Format AP metrics as an aligned plain-text table (one decimal, NaN as "-").

    Args:
        rows: either one metrics dict (``{"AP": 40.1, ...}``), printed as a single row without a
            name column, or named metrics dicts (``{"teacher": {...}, "student": {...}}``), one row
            each. Keys missing from a row print as "-".

    Returns:
        The table as a string, a header line then one line per row, no trailing newline.
    """
    flat = all(not isinstance(value, Mapping) for value in rows.values())
    named: list[tuple[str, Mapping[str, Any]]] = [("", rows)] if flat else list(rows.items())  # type: ignore
    name_cells: list[list[str]] = [[] for _ in named] if flat else [[str(name)] for name, _ in named]
    header = ([] if flat else ["name"]) + list(AP_KEYS)
    body = [
        cells + [_format_value(metrics.get(key)) for key in AP_KEYS]
        for cells, (_, metrics) in zip(name_cells, named)
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        # Names read best left-aligned, numbers right-aligned so the decimals line up.
        parts = [
            cell.ljust(width) if column == 0 and not flat else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join(render(row) for row in [header, *body])


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if math.isnan(number) else f"{number:.1f}"


def check_backend(backend: str, *, argument: str = "coco_evaluate") -> None:
    """Raise unless ``backend`` names an evaluator that can be imported (the optional one only when named).

    Args:
        backend: one of :data:`EVAL_BACKENDS`.
        argument: the config key or command-line option that chose it, named in the error.

    Raises:
        ConfigError: an unknown backend (the known ones are listed).
        MsadkitError: ``faster_coco_eval`` is not installed (the extra to install is named).
    """
    if backend not in EVAL_BACKENDS:
        raise ConfigError(f"{argument}: unknown backend {backend!r}; use one of {', '.join(EVAL_BACKENDS)}")
    if backend == "faster_coco_eval":
        try:
            importlib.import_module("faster_coco_eval")
        except ImportError:
            raise MsadkitError(_FAST_EVAL_MISSING.format(argument=argument)) from None


def _load_backend(backend: str) -> tuple[type, type]:
    """Return the (COCO, COCOeval) classes of ``backend``, importing the optional one lazily."""
    check_backend(backend)
    if backend == "faster_coco_eval":
        module = importlib.import_module("faster_coco_eval")
        return module.COCO, module.COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def read_gt_json(path: Path) -> dict:
    """Read and check a COCO ground-truth file; fill the optional "iscrowd" and "area" fields."""
    if not path.is_file():
        raise DatasetError(f"COCO ground-truth file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            dataset = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"COCO ground-truth file {path} is not valid JSON: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"COCO ground-truth file {path} cannot be read: {exc}") from None
    if not isinstance(dataset, dict):
        kind = type(dataset).__name__
        raise DatasetError(f"COCO ground-truth file {path} holds a {kind}, expected a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DatasetError(f"COCO ground-truth file {path}: key {key!r} is missing or not a list")
    for position, image in enumerate(dataset["images"]):
        if not isinstance(image, dict) or "id" not in image:
            raise DatasetError(f"COCO ground-truth file {path}: images[{position}] has no 'id'")
    for position, category in enumerate(dataset["categories"]):
        if not isinstance(category, dict) or "id" not in category:
            raise DatasetError(f"COCO ground-truth file {path}: categories[{position}] has no 'id'")
    annotations = []
    for position, ann in enumerate(dataset["annotations"]):
        required = ("id", "image_id", "category_id", "bbox")
        missing = [key for key in required if not isinstance(ann, dict) or key not in ann]
        if missing:
            raise DatasetError(f"COCO ground-truth file {path}: annotations[{position}] lacks {missing}")
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise DatasetError(
                f"COCO ground-truth file {path}: annotations[{position}] bbox {bbox!r} is not [x, y, w, h]"
            )
        # COCOeval reads both fields; files written by simple tools often omit them.
        annotations.append({"iscrowd": 0, "area": float(bbox[2]) * float(bbox[3]), **ann})
    return {**dataset, "annotations": annotations}


def check_results(results: list[dict], dataset: dict, path: Path) -> None:
    """Reject results that pycocotools would assert on or silently drop."""
    if not isinstance(results, list):
        raise InputError(f"coco_evaluate: coco_results must be a list, got {type(results).__name__}")
    image_ids = {image["id"] for image in dataset["images"]}
    category_ids = {category["id"] for category in dataset["categories"]}
    bad_images: set = set()
    bad_categories: set = set()
    for position, entry in enumerate(results):
        required = ("image_id", "category_id", "bbox", "score")
        missing = [key for key in required if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise InputError(f"coco_evaluate: coco_results[{position}] lacks {missing}")
        if entry["image_id"] not in image_ids:
            bad_images.add(entry["image_id"])
        if entry["category_id"] not in category_ids:
            bad_categories.add(entry["category_id"])
    if bad_images:
        raise InputError(
            f"coco_evaluate: results name image ids {sorted(bad_images)[:10]} that {path} does not have"
        )
    if bad_categories:
        # pycocotools would ignore these silently, hiding a wrong label -> category mapping.
        raise InputError(
            f"coco_evaluate: results name category ids {sorted(bad_categories)[:10]} that {path} does "
            f"not have (its categories are {sorted(category_ids)[:20]})"
        )


def make_coco(coco_cls: type, dataset: dict) -> Any:
    """A COCO API object (pycocotools or faster-coco-eval ``coco_cls``) over an in-memory ``dataset``."""
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def make_coco_pair(coco_cls: type, dataset: dict, coco_results: list[dict]) -> tuple[Any, Any]:
    """The ground-truth and the detection COCO API objects of ``dataset`` and its checked results.

    Call it inside a stdout capture: the COCO API prints while it indexes. An empty result list (an
    untrained model) gives an empty detection set.
    """
    gt = make_coco(coco_cls, dataset)
    if coco_results:
        # loadRes writes "area", "id" and "iscrowd" into the entries it gets: give it copies.
        return gt, gt.loadRes([dict(entry) for entry in coco_results])
    # loadRes indexes results[0] and fails on an empty list, so build the empty set directly.
    empty = {"images": list(dataset["images"]), "categories": list(dataset["categories"])}
    return gt, make_coco(coco_cls, {**empty, "annotations": []})
