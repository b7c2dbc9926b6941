"""COCO box evaluation time, pycocotools against faster-coco-eval, on a large synthetic result set.

Both backends go through msadkit's own entry point, ``msadkit.engine.evaluation.coco_evaluation.coco_evaluate(...,
backend=...)``, so the time includes what a user pays: reading and checking the ground-truth json,
building the index, loading the results, evaluate, accumulate and summarize. Before timing, the
twelve summary numbers of both evaluators are compared on the same data (they must agree).

faster-coco-eval is optional and not a dependency of msadkit; without it the script times
pycocotools alone and says how to install the other.

The data: ``--images`` images of 640x480 with 1..15 ground-truth boxes each (sizes from 6 to 400
pixels, so every COCO area bucket is filled; 2 % crowd boxes) over 80 categories, and
``--detections`` results per image: jittered copies of the ground truth (some with a wrong
category) and random boxes, with distinct random scores.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import (
    add_common_arguments,
    interleaved_times,
    median_ms,
    ratio_summary,
    start_benchmark,
    timed_rounds,
)
from msadkit.engine.evaluation.coco_evaluation import AP_KEYS, coco_evaluate

IMAGE_WIDTH, IMAGE_HEIGHT = 640, 480
NUM_CATEGORIES = 80


def _random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, 4)`` xywh boxes inside the image, side lengths log-uniform in [6, 400]."""
    sides = np.exp(rng.uniform(np.log(6), np.log(400), size=(count, 2)))
    sides = np.minimum(sides, [IMAGE_WIDTH - 1, IMAGE_HEIGHT - 1])
    corners = rng.uniform(0, 1, size=(count, 2)) * ([IMAGE_WIDTH, IMAGE_HEIGHT] - sides)
    return np.concatenate([corners, sides], axis=1)


def synthetic_coco(num_images: int, detections_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO ground-truth dict and a result list of ``detections_per_image`` entries per image."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    categories = [{"id": c + 1, "name": f"class{c + 1}"} for c in range(NUM_CATEGORIES)]
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "width": IMAGE_WIDTH, "height": IMAGE_HEIGHT, "file_name": f"{image_id}.jpg"})
        num_gt = int(rng.integers(1, 16))
        gt_boxes = _random_boxes(rng, num_gt)
        gt_categories = rng.integers(1, NUM_CATEGORIES + 1, size=num_gt)
        for box, category in zip(gt_boxes, gt_categories):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(rng.uniform() < 0.02),
                }
            )
        # Up to three jittered copies per ground-truth box, the rest random.
        copies = np.repeat(np.arange(num_gt), 3)[: detections_per_image]
        jitter = rng.normal(0, 0.1, size=(len(copies), 4)) * np.repeat(gt_boxes[copies, 2:], 2, axis=1)
        near = gt_boxes[copies] + jitter
        near[:, 2:] = np.maximum(near[:, 2:], 1.0)
        near_categories = np.where(
            rng.uniform(size=len(copies)) < 0.8,
            gt_categories[copies],
            rng.integers(1, NUM_CATEGORIES + 1, size=len(copies)),
        )
        far = _random_boxes(rng, detections_per_image - len(copies))
        far_categories = rng.integers(1, NUM_CATEGORIES + 1, size=len(far))
        scores = np.concatenate([rng.uniform(0.3, 1.0, size=len(near)), rng.uniform(0.0, 0.6, size=len(far))])
        for box, category, score in zip(
            np.concatenate([near, far]), np.concatenate([near_categories, far_categories]), scores
        ):
            results.append(
                {"image_id": image_id, "category_id": int(category), "bbox": [float(v) for v in box], "score": float(score)}
            )
    return {"images": images, "annotations": annotations, "categories": categories}, results


def raw_stats(gt: dict, results: list[dict], backend: str) -> np.ndarray:
    """The twelve summary numbers of a backend's own COCO/COCOeval classes."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Evaluator
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Evaluator
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = Evaluator(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats[:12], dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--detections", type=int, default=100, help="results per image")
    args = parser.parse_args()
    if args.quick:
        args.images, args.detections = 50, 20
    rounds = timed_rounds(args, 3)
    start_benchmark("COCO evaluation: faster-coco-eval / pycocotools", args.threads)
    versions = {"pycocotools": importlib.metadata.version("pycocotools")}
    have_faster = importlib.util.find_spec("faster_coco_eval") is not None
    if have_faster:
        import faster_coco_eval

        versions["faster_coco_eval"] = getattr(faster_coco_eval, "__version__", "unknown version")
    print(f"   numpy {np.__version__}, " + ", ".join(f"{k} {v}" for k, v in versions.items()))

    gt, results = synthetic_coco(args.images, args.detections)
    print(f"   {len(gt['images'])} images, {len(gt['annotations'])} ground-truth boxes, {len(results)} results")
    with tempfile.TemporaryDirectory() as folder:
        gt_path = Path(folder) / "gt.json"
        gt_path.write_text(json.dumps(gt))
        contenders = {"pycocotools": lambda: coco_evaluate(gt_path, results, backend="pycocotools")}
        if have_faster:
            contenders["faster_coco_eval"] = lambda: coco_evaluate(gt_path, results, backend="faster_coco_eval")
            reference, faster = raw_stats(gt, results, "pycocotools"), raw_stats(gt, results, "faster_coco_eval")
            print(f"   pycocotools stats:      {np.round(reference, 4).tolist()}")
            print(f"   faster_coco_eval stats: {np.round(faster, 4).tolist()}")
            print(f"   max |difference| of the 12 summary numbers: {np.abs(reference - faster).max():.2e}")
            ours = {name: coco_evaluate(gt_path, results, backend=name) for name in contenders}
            worst = max(abs(ours["pycocotools"][k] - ours["faster_coco_eval"][k]) for k in AP_KEYS)
            print(f"   msadkit coco_evaluate, max |difference| over {', '.join(AP_KEYS)}: {worst:.2e} AP points")
        else:
            print("   faster-coco-eval is not installed (pip install faster-coco-eval): timing pycocotools only")
        times = interleaved_times(contenders, rounds=rounds, warmup=args.warmup)

    for name in contenders:
        print(f"median coco_evaluate: {name} {median_ms(times[name]):.0f} ms")
    if have_faster:
        per_round, of_medians = ratio_summary(times, "faster_coco_eval", "pycocotools")
        print(f"RATIO faster_coco_eval/pycocotools = {per_round:.3f} (median of per-round ratios; ratio of medians {of_medians:.3f})")
    else:
        print("RATIO faster_coco_eval/pycocotools = n/a (faster-coco-eval not installed)")


if __name__ == "__main__":
    main()
