"""pycocotools' accumulation of COCO precision, redone from per-image records with images drawn
any number of times.

``COCOeval.evaluate()`` leaves one record per (category, area range, image): the detection scores,
matches and ignore flags at each IoU threshold and the ground-truth ignore flags. ``accumulate()``
concatenates the records of the evaluated images, sorts the detections by score and reads the
interpolated precision at 101 recall thresholds. :class:`PerImageEvaluation` does the same for any
multiplicity of each image, all (category, area) groups at once in a few NumPy calls: with every
image once it gives pycocotools' precision bit for bit, and with image multiplicities what
pycocotools gives on a ground truth in which each drawn image is a separate copy (the tests check
both). Only 100 detections per image (COCO's AP) and box evaluation with categories are covered.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from msadkit.engine.evaluation.coco_evaluation import check_results, make_coco_pair, read_gt_json

__all__ = ["PerImageEvaluation", "evaluate_per_image", "resample_counts"]

# (IoU threshold or None for all, area range label) of each metric, as COCOeval.summarize reads them.
_METRIC_SLICES = {
    "AP": (None, "all"),
    "AP50": (0.5, "all"),
    "AP75": (0.75, "all"),
    "APs": (None, "small"),
    "APm": (None, "medium"),
    "APl": (None, "large"),
}
_MAX_DETS = 100

# Detections per chunk of (category, area) groups accumulated together: bounds the memory of one
# resample (some 600 bytes a detection, under 100 MB) while keeping the number of NumPy calls small.
_CHUNK_DETECTIONS = 1 << 17


@dataclass(frozen=True)
class _Chunk:
    """The per-image records of ``G`` (category, area range) groups, in accumulate's sorted order.

    Within a group its ``N_g`` detections over every image are sorted by descending score (stable,
    images in id order, as accumulate's concatenation and mergesort leave them); groups follow each
    other. A run is a stretch of one group's detections of one image with one score: a duplicated
    image repeats each run whole, so that tied scores keep the order pycocotools gives them on a
    ground truth with the image copied.
    """

    categories: np.ndarray  # (G,) index into the category axis
    areas: np.ndarray  # (G,) index into the area-range axis
    outcome: np.ndarray  # (2T, N) bool: rows :T true positives (matched, not ignored), T: false positives
    run_start: np.ndarray  # (Q,) first position of each run
    run_length: np.ndarray  # (Q,)
    run_image: np.ndarray  # (Q,) image index of each run
    run_group: np.ndarray  # (Q,) group index of each run
    positives: np.ndarray  # (G, I) not-ignored ground-truth boxes per group and image


def _group_records(records: list, num_images: int, num_t: int) -> tuple | None:
    """(outcome (2T, N) bool, image (N,), score (N,), positives (I,)) of one group, sorted; None
    when no image has a ground-truth box there (accumulate then leaves the precision at -1)."""
    positives = np.zeros(num_images, dtype=np.int64)
    scores, matched, ignored, images = [], [], [], []
    for index, record in enumerate(records):
        if record is None:
            continue
        positives[index] = np.count_nonzero(np.asarray(record["gtIgnore"]) == 0)
        scores.append(np.asarray(record["dtScores"][:_MAX_DETS], dtype=np.float64))
        matched.append(np.asarray(record["dtMatches"]).reshape(num_t, -1)[:, :_MAX_DETS] != 0)
        ignored.append(np.asarray(record["dtIgnore"]).reshape(num_t, -1)[:, :_MAX_DETS] != 0)
        images.append(np.full(len(scores[-1]), index, dtype=np.int64))
    if positives.sum() == 0:
        return None
    score = np.concatenate(scores)
    order = np.argsort(-score, kind="mergesort")
    match, ignore = np.concatenate(matched, axis=1)[:, order], np.concatenate(ignored, axis=1)[:, order]
    # A detection ignored at every IoU threshold (mostly one outside the area range) adds neither a
    # true nor a false positive: it only repeats its predecessor's recall and precision, so it can
    # never be the first to reach a recall threshold nor raise a running maximum. Dropping it leaves
    # every number as it was and halves the work of the small/medium/large ranges.
    keep = ~ignore.all(axis=0)
    outcome = np.concatenate([match & ~ignore, ~match & ~ignore])[:, keep]
    return outcome, np.concatenate(images)[order[keep]], score[order[keep]], positives


def _make_chunk(groups: list[tuple], num_images: int) -> _Chunk:
    """Concatenate groups ``(category, area, outcome, image, score, positives)`` into one chunk."""
    run_start, run_image, run_group, offset = [], [], [], 0
    for g, (_, _, _, image, score, _) in enumerate(groups):
        new_run = np.ones(len(score), dtype=bool)
        new_run[1:] = (score[1:] != score[:-1]) | (image[1:] != image[:-1])
        starts = np.flatnonzero(new_run)
        run_start.append(starts + offset)
        run_image.append(image[starts])
        run_group.append(np.full(len(starts), g, dtype=np.int64))
        offset += len(score)
    starts = np.concatenate(run_start)
    return _Chunk(
        categories=np.array([group[0] for group in groups]),
        areas=np.array([group[1] for group in groups]),
        outcome=np.concatenate([group[2] for group in groups], axis=1),
        run_start=starts,
        run_length=np.diff(np.append(starts, offset)),
        run_image=np.concatenate(run_image),
        run_group=np.concatenate(run_group),
        positives=np.stack([group[5] for group in groups]).reshape(len(groups), num_images),
    )


class PerImageEvaluation:
    """pycocotools' per-image records of one set of detections, ready to re-accumulate.

    Attributes:
        image_ids: the ``I`` evaluated image ids, sorted (the image axis of every count vector).
        iou_thresholds: ``(T,)`` IoU thresholds (0.50:0.05:0.95).
        recall_thresholds: ``(R,)`` the 101 recall points.
        num_categories, area_labels: the ``K`` categories and the area-range labels.
    """

    def __init__(self, evaluator: Any):
        params = evaluator.params
        if params.maxDets[-1] != _MAX_DETS or not params.useCats:
            raise ValueError("PerImageEvaluation needs COCOeval's default maxDets (.., 100) and useCats=1")
        self.image_ids = [int(i) for i in params.imgIds]
        self.iou_thresholds = np.asarray(params.iouThrs, dtype=np.float64)
        self.recall_thresholds = np.asarray(params.recThrs, dtype=np.float64)
        self.num_categories = len(params.catIds)
        self.area_labels = list(params.areaRngLbl)
        num_images, num_areas, num_t = len(self.image_ids), len(params.areaRng), len(self.iou_thresholds)
        self._chunks: list[_Chunk] = []
        pending: list[tuple] = []
        for k in range(self.num_categories):
            for a in range(num_areas):
                start = (k * num_areas + a) * num_images
                group = _group_records(evaluator.evalImgs[start : start + num_images], num_images, num_t)
                if group is not None:
                    pending.append((k, a, *group))
                if pending and sum(group[2].shape[1] for group in pending) >= _CHUNK_DETECTIONS:
                    self._chunks.append(_make_chunk(pending, num_images))
                    pending = []
        if pending:
            self._chunks.append(_make_chunk(pending, num_images))

    def precision(self, counts: np.ndarray | None = None) -> np.ndarray:
        """Interpolated precision ``(T, R, K, A)`` at 100 detections per image, -1 where undefined.

        Args:
            counts: ``(I,)`` how often each image is drawn (default: each once, which gives
                ``COCOeval.eval["precision"][..., -1]`` exactly).
        """
        counts = np.ones(len(self.image_ids), np.int64) if counts is None else np.asarray(counts, np.int64)
        if counts.shape != (len(self.image_ids),):
            raise ValueError(f"counts must have shape ({len(self.image_ids)},), got {counts.shape}")
        shape = (len(self.iou_thresholds), len(self.recall_thresholds), self.num_categories, len(self.area_labels))
        precision = -np.ones(shape)
        for chunk in self._chunks:
            defined, values = self._accumulate(chunk, counts)
            # values (T, G, R) -> precision[t, r, category_g, area_g]
            precision[:, :, chunk.categories[defined], chunk.areas[defined]] = values[:, defined].transpose(0, 2, 1)
        return precision

    def _accumulate(self, chunk: _Chunk, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """COCOeval.accumulate of every group of ``chunk`` for image multiplicities ``counts (I,)``.

        Returns ``defined (G,)`` (a group with no drawn ground-truth box stays -1) and the
        interpolated precision ``(T, G, R)``. Every float is computed by the same operation as in
        pycocotools (the recall comparisons are done on exact integer counts instead), so the
        results agree bit for bit.
        """
        num_t, num_groups, recall_thresholds = len(self.iou_thresholds), len(chunk.categories), self.recall_thresholds
        positives = chunk.positives @ counts  # (G,)
        sizes = chunk.run_length * counts[chunk.run_image]
        total = int(sizes.sum())
        if len(chunk.run_start) == chunk.outcome.shape[1]:
            # No tied detections within an image (the common case): each detection repeats in place.
            order = np.repeat(chunk.run_start, sizes)
        else:
            run = np.repeat(np.arange(len(sizes)), sizes)
            offset = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
            order = chunk.run_start[run] + offset % chunk.run_length[run]
        group_size = np.bincount(chunk.run_group, weights=sizes, minlength=num_groups).astype(np.int64)
        group_end = np.cumsum(group_size)
        group_start = group_end - group_size
        outcome = chunk.outcome[:, order]
        # True and false positives counted from the start of each group: one cumulative sum (int32
        # is several times faster than int64), less its value where the group begins.
        cumulative = np.cumsum(outcome, axis=1, dtype=np.int32)
        cumulative = np.concatenate([np.zeros((2 * num_t, 1), np.int32), cumulative], axis=1)  # (2T, 1 + N)
        before = cumulative[:, group_start]  # (2T, G)
        counts_in_groups = (cumulative[:, 1:] - np.repeat(before, group_size, axis=1)).astype(float)
        tp, fp = counts_in_groups[:num_t], counts_in_groups[num_t:]
        precision = tp / (fp + tp + np.spacing(1))  # (T, N), as accumulate computes it
        # accumulate takes, per recall threshold, the first position whose recall tp / positives
        # reaches it. Recall is monotone in tp, so that is where tp first reaches the smallest count
        # k whose recall does: the group's k-th true positive (its first position for k = 0).
        needed = _counts_reaching(positives, recall_thresholds)[None]  # (1, G, R)
        true_positives = np.flatnonzero(outcome[:num_t])  # flat positions in (T, N), ascending
        row_first = np.concatenate([[0], np.cumsum(cumulative[:num_t, -1])[:-1]])  # (T,) in earlier rows
        kth = (row_first[:, None] + before[:num_t])[:, :, None] + needed - 1  # (T, G, R)
        row_start = (np.arange(num_t) * total)[:, None]
        first = (row_start + group_start)[:, :, None]
        end = (row_start + group_end)[:, :, None]
        inside = (needed <= (cumulative[:num_t, group_end] - before[:num_t])[:, :, None]) & (first < end)
        kth_position = true_positives[np.clip(kth, 0, len(true_positives) - 1)] if len(true_positives) else first
        found = np.where(needed == 0, first, kth_position)
        # Interpolated precision at a position is the maximum from there to the group's end: maxima
        # of the blocks between consecutive positions, then a running maximum from the right.
        starts = np.concatenate([np.where(inside, found, end), end], axis=2).ravel()
        blocks = np.maximum.reduceat(np.append(precision.ravel(), 0.0), starts).reshape(num_t, num_groups, -1)
        blocks = np.where(inside, blocks[:, :, :-1], 0.0)
        values = np.maximum.accumulate(blocks[:, :, ::-1], axis=2)[:, :, ::-1]
        return positives > 0, np.where(inside, values, 0.0)

    def metrics(self, counts: np.ndarray | None = None) -> dict[str, float]:
        """AP, AP50, AP75, APs, APm, APl in percent (NaN where undefined) for image multiplicities
        ``counts`` ``(I,)`` (default: each image once, which gives ``coco_evaluate``'s numbers)."""
        return self._summarize(self.precision(counts))

    def _summarize(self, precision: np.ndarray) -> dict[str, float]:
        values = {}
        for key, (iou, area) in _METRIC_SLICES.items():
            selected = precision
            if iou is not None:
                selected = selected[np.where(iou == self.iou_thresholds)[0]]
            selected = selected[:, :, :, self.area_labels.index(area)]
            defined = selected[selected > -1]
            # As COCOeval.summarize: the plain mean of the defined entries, -1 (here NaN) if none.
            values[key] = math.nan if defined.size == 0 else 100.0 * float(np.mean(defined))
        return values


def _counts_reaching(positives: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(G, R)`` the smallest count ``k`` with ``k / positives[g] >= thresholds[r]`` in float64, as
    accumulate computes recall (groups without positives get any value: they are left at -1)."""
    divisor = np.maximum(positives, 1).astype(float)[:, None, None]
    candidates = np.ceil(thresholds[None, :, None] * divisor).astype(np.int64) + np.arange(-2, 3)
    candidates = np.maximum(candidates, 0)
    # The rounded product is within one of the exact count: one of five neighbours is the first.
    reaches = candidates / divisor >= thresholds[None, :, None]
    return np.take_along_axis(candidates, reaches.argmax(axis=2)[:, :, None], axis=2)[:, :, 0]


def evaluate_per_image(gt_json: str | os.PathLike, results: list[dict]) -> PerImageEvaluation:
    """Run ``COCOeval.evaluate()`` (bbox) once on ``results`` and keep its per-image records.

    The ground truth is read and the results checked as ``coco_evaluate`` does, so the identity
    resample reproduces ``eval.json``.

    Raises:
        DatasetError: the ground-truth json is missing or malformed.
        InputError: a result names an unknown image or category, or lacks a key.
    """
    path = Path(gt_json)
    dataset = read_gt_json(path)
    check_results(results, dataset, path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt, dt = make_coco_pair(COCO, dataset, results)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
    return PerImageEvaluation(evaluator)


def resample_counts(num_images: int, num_samples: int, seed: int = 0) -> np.ndarray:
    """``(num_samples, num_images)`` multiplicities of images drawn with replacement (NumPy's
    ``default_rng(seed)``; each row sums to ``num_images``)."""
    draws = np.random.default_rng(seed).integers(0, num_images, size=(num_samples, num_images))
    counts = np.zeros((num_samples, num_images), dtype=np.int64)
    np.add.at(counts, (np.arange(num_samples)[:, None], draws), 1)
    return counts
