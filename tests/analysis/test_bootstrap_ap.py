"""The bootstrap of COCO AP over validation images, checked against pycocotools itself."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from msadkit.analysis import bootstrap_ap as bootstrap_module
from msadkit.analysis import coco_accumulation
from msadkit.analysis.bootstrap_ap import EvaluationSE, bootstrap_ap, cached_bootstrap, run_validation_json
from msadkit.analysis.coco_accumulation import evaluate_per_image, resample_counts
from msadkit.config import load_config
from msadkit.engine.evaluation.coco_evaluation import coco_evaluate
from msadkit.engine.train.trainer import train
from msadkit.errors import MsadkitError
from msadkit.utils.run_folder import BOOTSTRAP_NAME, DETECTIONS_NAME

CATEGORIES = [1, 5, 9]
UNLABELED = 12  # a category with detections but no ground truth: pycocotools leaves its precision at -1
# Box sides that land in COCO's small (< 32^2), medium and large (> 96^2) area ranges.
SIDES = {"small": (4, 28), "medium": (36, 90), "large": (100, 220)}


def _synthetic_set(seed: int = 0, num_images: int = 36) -> tuple[dict, list[dict]]:
    """Ground truth with three categories and all sizes (a few crowd boxes, empty images) and
    detections with jittered hits, misses, wrong labels, false positives, tied scores (two
    decimals) and one image over the 100-detection limit."""
    rng = random.Random(seed)
    images = [{"id": 3 + 4 * i, "width": 640, "height": 480, "file_name": f"{i}.png"} for i in range(num_images)]
    rng.shuffle(images)  # evaluation sorts the ids; the file order must not matter
    annotations, results = [], []
    for image in images:
        for _ in range(rng.choice([0, 1, 2, 3, 5])):
            low, high = SIDES[rng.choice(list(SIDES))]
            w, h = rng.uniform(low, high), rng.uniform(low, high)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            category = rng.choice(CATEGORIES)
            ann = {"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                   "bbox": [x, y, w, h], "iscrowd": int(rng.random() < 0.05)}
            # Half with a mask area smaller than the box, as in COCO, so the area field decides the range.
            ann["area"] = (0.8 if rng.random() < 0.5 else 1.0) * w * h
            annotations.append(ann)
            for _ in range(rng.choice([0, 1, 1, 1, 2])):  # missed, found, found twice
                jitter = rng.uniform(0.0, 0.35)
                box = [x + jitter * w * rng.uniform(-1, 1), y + jitter * h * rng.uniform(-1, 1), w, h]
                label = category if rng.random() < 0.85 else rng.choice(CATEGORIES)
                results.append({"image_id": image["id"], "category_id": label, "bbox": box,
                                "score": round(rng.uniform(0.05, 1.0), 2)})
        for _ in range(rng.choice([0, 0, 1, 3])):  # background false positives
            side = rng.uniform(5, 150)
            results.append({"image_id": image["id"], "category_id": rng.choice([*CATEGORIES, UNLABELED]),
                            "bbox": [rng.uniform(0, 480), rng.uniform(0, 320), side, side],
                            "score": round(rng.uniform(0.05, 0.9), 2)})
    crowded = images[0]["id"]
    for _ in range(120):
        results.append({"image_id": crowded, "category_id": rng.choice(CATEGORIES),
                        "bbox": [rng.uniform(0, 600), rng.uniform(0, 440), 30.0, 30.0],
                        "score": round(rng.uniform(0.05, 0.5), 1)})
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": c, "name": f"c{c}"} for c in [*CATEGORIES, UNLABELED]]}
    return gt, results


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    gt, results = _synthetic_set()
    path = tmp_path_factory.mktemp("bootstrap") / "val.json"
    path.write_text(json.dumps(gt))
    return path, gt, results


def _duplicated(gt: dict, results: list[dict], counts: np.ndarray) -> tuple[dict, list[dict]]:
    """The ground truth and results with image i (in sorted id order) copied counts[i] times, each
    copy a new image with new, increasing ids; annotations and detections keep their order."""
    images, annotations, entries = [], [], []
    for image_id, count in zip(sorted(image["id"] for image in gt["images"]), counts):
        for _ in range(int(count)):
            new_id = len(images) + 1
            images.append({"id": new_id, "width": 640, "height": 480})
            for ann in gt["annotations"]:
                if ann["image_id"] == image_id:
                    annotations.append({**ann, "id": len(annotations) + 1, "image_id": new_id})
            entries += [{**entry, "image_id": new_id} for entry in results if entry["image_id"] == image_id]
    return {"images": images, "annotations": annotations, "categories": gt["categories"]}, entries


def test_identity_resample_reproduces_pycocotools_exactly(synthetic):
    path, _, results = synthetic
    evaluation = evaluate_per_image(path, results)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        evaluator = COCOeval(gt, gt.loadRes([dict(entry) for entry in results]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    reference = evaluator.eval["precision"][..., -1]  # maxDets 100
    assert (reference > -1).any() and (reference == -1).any()  # both defined and absent entries occur
    np.testing.assert_array_equal(evaluation.precision(), reference)
    expected = coco_evaluate(path, results)
    assert all(not math.isnan(v) for v in expected.values())
    for key, value in evaluation.metrics().items():
        assert value == pytest.approx(expected[key], abs=1e-12), key
    # Counting every image once, explicitly, is the same thing.
    assert evaluation.metrics(np.ones(len(evaluation.image_ids))) == evaluation.metrics()


def test_a_resample_equals_pycocotools_on_a_ground_truth_with_the_images_copied(synthetic, tmp_path):
    path, gt, results = synthetic
    evaluation = evaluate_per_image(path, results)
    counts = resample_counts(len(evaluation.image_ids), 5, seed=11)
    assert (counts.sum(axis=1) == len(evaluation.image_ids)).all() and counts.max() >= 2
    references = []
    for index, row in enumerate(counts):
        copied_gt, copied_results = _duplicated(gt, results, row)
        copied_path = tmp_path / f"copied{index}.json"
        copied_path.write_text(json.dumps(copied_gt))
        reference = coco_evaluate(copied_path, copied_results)
        fast = evaluation.metrics(row)
        for key in reference:
            assert fast[key] == pytest.approx(reference[key], abs=1e-12, nan_ok=True), (index, key)
        references.append(reference)
    # The bootstrap with the same draws: full-set values, SE = sample std of the five references.
    result = bootstrap_ap(path, results, num_samples=5, seed=11)
    full = coco_evaluate(path, results)
    for key, (value, se) in result.items():
        column = [reference[key] for reference in references]
        assert value == pytest.approx(full[key], abs=1e-12)
        assert se == pytest.approx(float(np.std(column, ddof=1)), abs=1e-12), key
        assert se > 0


def test_groups_split_into_chunks_give_the_same_numbers(synthetic, monkeypatch):
    path, _, results = synthetic
    whole = evaluate_per_image(path, results)
    monkeypatch.setattr(coco_accumulation, "_CHUNK_DETECTIONS", 40)
    chunked = evaluate_per_image(path, results)
    assert len(chunked._chunks) > 3 and len(whole._chunks) == 1
    for counts in [None, *resample_counts(len(whole.image_ids), 3, seed=5)]:
        np.testing.assert_array_equal(chunked.precision(counts), whole.precision(counts))


def test_ties_within_a_copied_image_keep_pycocotools_order(tmp_path):
    # One image, three detections with one score (hit, miss, hit), drawn twice: the order of the
    # tied detections decides the precision curve, so the copies must interleave as pycocotools does.
    gt = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40]},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40]},
                          {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 50, 40, 40]}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.5},
               {"image_id": 1, "category_id": 1, "bbox": [0, 55, 20, 20], "score": 0.5},
               {"image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "score": 0.5},
               {"image_id": 2, "category_id": 1, "bbox": [10, 50, 40, 40], "score": 0.5}]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    evaluation = evaluate_per_image(path, results)
    for counts in ([2, 0], [2, 1], [1, 3], [0, 2]):
        copied_gt, copied_results = _duplicated(gt, results, np.array(counts))
        copied_path = tmp_path / "copied.json"
        copied_path.write_text(json.dumps(copied_gt))
        reference = coco_evaluate(copied_path, copied_results)
        assert evaluation.metrics(np.array(counts)) == pytest.approx(reference, abs=1e-12, nan_ok=True), counts


def test_bootstrap_is_reproducible_and_depends_on_the_seed(synthetic):
    path, _, results = synthetic
    first = bootstrap_ap(path, results, num_samples=20, seed=3)
    assert first == bootstrap_ap(path, results, num_samples=20, seed=3)
    assert first["AP"][1] != bootstrap_ap(path, results, num_samples=20, seed=4)["AP"][1]
    assert set(first) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    with pytest.raises(ValueError, match="num_samples"):
        bootstrap_ap(path, results, num_samples=1)


def test_bootstrap_of_an_empty_result_list(synthetic):
    path, _, _ = synthetic
    result = bootstrap_ap(path, [], num_samples=4)
    assert all(value == 0.0 and se == 0.0 for value, se in result.values())


def test_evaluation_se_report():
    good = EvaluationSE("AP", 41.234, 0.31, 500)
    assert good.within_limit and str(good) == "AP 41.23, evaluation SE 0.31 over 500 validation images (<= 0.5)"
    poor = EvaluationSE("AP", 20.0, 1.0, 64)
    assert not poor.within_limit and poor.images_for_limit == 256
    assert "about 256 images would bring it to 0.5" in str(poor)


def test_cached_bootstrap_reuses_and_refreshes_its_file(synthetic, tmp_path, monkeypatch):
    path, _, results = synthetic
    run = tmp_path / "run"
    with pytest.raises(MsadkitError, match=DETECTIONS_NAME):
        cached_bootstrap(run, 4, gt_json=path)
    run.mkdir()
    (run / DETECTIONS_NAME).write_text(json.dumps(results))
    first = cached_bootstrap(run, 4, seed=1, gt_json=path)
    assert first.metrics == bootstrap_ap(path, results, num_samples=4, seed=1)
    assert first.num_images == 36 and json.loads((run / BOOTSTRAP_NAME).read_text())["num_samples"] == 4

    calls = []
    real = bootstrap_module.bootstrap_run
    monkeypatch.setattr(bootstrap_module, "bootstrap_run", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert cached_bootstrap(run, 4, seed=1, gt_json=path) == first and calls == []
    cached_bootstrap(run, 5, seed=1, gt_json=path)  # other settings: recomputed
    assert len(calls) == 1
    cached_bootstrap(run, 5, seed=1, gt_json=path)
    assert len(calls) == 1
    # Newer detections: recomputed.
    later = (run / BOOTSTRAP_NAME).stat().st_mtime_ns + 10**9
    os.utime(run / DETECTIONS_NAME, ns=(later, later))
    cached_bootstrap(run, 5, seed=1, gt_json=path)
    assert len(calls) == 2


def test_a_trained_run_keeps_detections_that_re_evaluate_to_its_eval_json(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    # A score threshold of 0 keeps boxes from a model trained for two iterations.
    config = load_config("fcos_demo", [*tiny_overrides(run, max_iter=2), "model.fcos.score_thresh=0.0"])
    train(config)
    detections = json.loads((run / DETECTIONS_NAME).read_text())
    assert isinstance(detections, list) and len(detections) > 4
    assert set(detections[0]) == {"image_id", "category_id", "bbox", "score"}
    metrics = json.loads((run / "eval.json").read_text())
    gt_json = run_validation_json(run)
    assert coco_evaluate(gt_json, detections) == pytest.approx(metrics, abs=1e-12, nan_ok=True)
    result = cached_bootstrap(run, 3)
    assert result.metrics["AP"][0] == pytest.approx(metrics["AP"], abs=1e-12)
    assert result.num_images == 4
