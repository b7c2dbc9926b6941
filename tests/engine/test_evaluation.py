"""COCO evaluation: result conversion, AP values checked against hand computations."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from msadkit.engine.evaluation.coco_evaluation import (
    AP_KEYS,
    coco_evaluate,
    coco_evaluate_with_summary,
    format_ap_table,
)
from msadkit.engine.inference.coco_results import detections_to_coco
from msadkit.errors import DatasetError, InputError, MsadkitError

IOU_THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]


def write_gt(path, boxes_per_image, category_ids=(1,)):
    """Write a COCO json; ``boxes_per_image`` maps image id -> list of (category_id, [x, y, w, h])."""
    images, annotations = [], []
    for image_id, boxes in boxes_per_image.items():
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.png"})
        for category_id, bbox in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": f"class{c}"} for c in category_ids]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def iou_xywh(a, b):
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def interpolated_ap(is_true_positive, num_gt):
    """COCO's 101-point interpolated AP of detections already sorted by decreasing score."""
    precisions, recalls, hits = [], [], 0
    for rank, hit in enumerate(is_true_positive, start=1):
        hits += hit
        precisions.append(hits / rank)
        recalls.append(hits / num_gt)
    total = 0.0
    for point in range(101):
        level = point / 100
        # Best precision at any recall >= level (precision envelope); 0 if that recall is never reached.
        reachable = [p for p, r in zip(precisions, recalls) if r >= level - 1e-12]
        total += max(reachable) if reachable else 0.0
    return total / 101


def test_perfect_detections_give_100_everywhere_through_scale_and_category_mapping(tmp_path):
    category_ids = [3, 7]
    gt = {
        1: [(3, [10.0, 10.0, 20.0, 20.0]), (7, [100.0, 50.0, 50.0, 60.0])],  # small, medium
        2: [(7, [30.0, 40.0, 150.0, 120.0])],  # large
    }
    gt_path = write_gt(tmp_path / "gt.json", gt, category_ids)
    scale = 2.0
    detections = []
    for boxes in gt.values():
        xyxy = [[x, y, x + w, y + h] for _, (x, y, w, h) in boxes]
        detections.append(
            {
                "boxes": torch.tensor(xyxy) * scale,
                "scores": torch.ones(len(boxes)),
                "labels": torch.tensor([category_ids.index(c) for c, _ in boxes]),
            }
        )
    results = detections_to_coco(detections, [1, 2], [scale, scale], category_ids)
    metrics = coco_evaluate(gt_path, results)
    assert set(metrics) == set(AP_KEYS)
    for key in AP_KEYS:
        assert metrics[key] == pytest.approx(100.0), key


def test_detections_to_coco_divides_by_scale_and_maps_labels():
    detections = [
        {
            "boxes": torch.tensor([[20.0, 40.0, 60.0, 100.0], [0.0, 0.0, 8.0, 4.0]]),
            "scores": torch.tensor([0.9, 0.25]),
            "labels": torch.tensor([1, 0]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    results = detections_to_coco(detections, [42, 43], [2.0, 0.5], [3, 7])
    assert len(results) == 2
    first, second = results
    assert first["image_id"] == 42 and first["category_id"] == 7
    assert first["bbox"] == pytest.approx([10.0, 20.0, 20.0, 30.0])
    assert first["score"] == pytest.approx(0.9)
    assert second["category_id"] == 3
    assert second["bbox"] == pytest.approx([0.0, 0.0, 4.0, 2.0])
    assert all(isinstance(v, float) for v in first["bbox"]) and isinstance(first["image_id"], int)


def test_detections_to_coco_rejects_bad_input():
    det = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([2])}
    with pytest.raises(InputError, match="labels"):
        detections_to_coco([det], [1], [1.0], [3, 7])
    with pytest.raises(InputError, match="same length"):
        detections_to_coco([det], [1, 2], [1.0], [3, 7])
    with pytest.raises(InputError, match="scales"):
        detections_to_coco([{**det, "labels": torch.tensor([0])}], [1], [0.0], [3, 7])


def test_single_detection_with_known_iou(tmp_path):
    gt_box = [0.0, 0.0, 100.0, 100.0]
    gt_path = write_gt(tmp_path / "gt.json", {1: [(1, gt_box)]})
    det_box = [0.0, 0.0, 100.0, 62.5]  # inside the gt box: IoU = 6250 / 10000
    iou = iou_xywh(gt_box, det_box)
    assert iou == 0.625
    results = [{"image_id": 1, "category_id": 1, "bbox": det_box, "score": 0.7}]
    metrics = coco_evaluate(gt_path, results)
    matched = [t for t in IOU_THRESHOLDS if iou >= t]  # 0.5, 0.55, 0.6
    assert len(matched) == 3
    assert metrics["AP50"] == pytest.approx(100.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(100.0 * len(matched) / 10)
    assert math.isnan(metrics["APs"]) and math.isnan(metrics["APm"])  # no small or medium gt


def test_two_detections_ap_matches_hand_computed_interpolated_precision(tmp_path):
    gt_box = [0.0, 0.0, 100.0, 100.0]
    gt_path = write_gt(tmp_path / "gt.json", {1: [(1, gt_box)], 2: [(1, gt_box)]})
    # The higher-scored detection is the worse one, so precision drops when it stops matching.
    dets = [(1, [0.0, 0.0, 100.0, 62.5], 0.9), (2, [0.0, 0.0, 100.0, 92.0], 0.8)]
    results = [{"image_id": i, "category_id": 1, "bbox": b, "score": s} for i, b, s in dets]
    metrics = coco_evaluate(gt_path, results)

    ious = [iou_xywh(gt_box, box) for _, box, _ in dets]  # already in decreasing score order
    per_threshold = [interpolated_ap([iou >= t for iou in ious], num_gt=2) for t in IOU_THRESHOLDS]
    # 0.5-0.6 both match (AP 1); 0.65-0.9 only the second (51 recall points at precision 0.5); 0.95 none.
    assert per_threshold[0] == pytest.approx(1.0)
    assert per_threshold[3] == pytest.approx(51 * 0.5 / 101)
    assert per_threshold[9] == pytest.approx(0.0)
    assert metrics["AP50"] == pytest.approx(100.0)
    assert metrics["AP75"] == pytest.approx(100.0 * per_threshold[5])
    assert metrics["AP"] == pytest.approx(100.0 * sum(per_threshold) / 10)
    assert metrics["AP"] == pytest.approx(100.0 * (3 + 6 * 51 * 0.5 / 101) / 10)


def test_empty_detections_give_zeros_and_nan_for_buckets_without_gt(tmp_path):
    small, large = [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 200.0, 200.0]
    gt_path = write_gt(tmp_path / "gt.json", {1: [(1, small), (1, large)]})
    metrics = coco_evaluate(gt_path, [])
    for key in ("AP", "AP50", "AP75", "APs", "APl"):
        assert metrics[key] == 0.0, key
    assert math.isnan(metrics["APm"])  # no gt with area in [32^2, 96^2)


def test_image_ids_restricts_the_evaluated_images(tmp_path):
    gt_box = [0.0, 0.0, 100.0, 100.0]
    gt_path = write_gt(tmp_path / "gt.json", {1: [(1, gt_box)], 2: [(1, gt_box)]})
    results = [{"image_id": 1, "category_id": 1, "bbox": gt_box, "score": 1.0}]
    # Over both images the gt of image 2 is missed: recall 0.5 at precision 1.
    assert coco_evaluate(gt_path, results)["AP"] == pytest.approx(100.0 * interpolated_ap([True], num_gt=2))
    assert coco_evaluate(gt_path, results, image_ids=[1])["AP"] == pytest.approx(100.0)
    with pytest.raises(InputError, match="99"):
        coco_evaluate(gt_path, results, image_ids=[99])


def test_summary_is_captured_not_printed(tmp_path, capsys):
    gt_path = write_gt(tmp_path / "gt.json", {1: [(1, [0.0, 0.0, 50.0, 50.0])]})
    results = [{"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 50.0, 50.0], "score": 1.0}]
    metrics, summary = coco_evaluate_with_summary(gt_path, results)
    assert metrics["AP"] == pytest.approx(100.0)
    assert "Average Precision" in summary and "1.000" in summary
    assert capsys.readouterr().out == ""


def test_results_must_fit_the_gt(tmp_path):
    gt_path = write_gt(tmp_path / "gt.json", {1: [(3, [0.0, 0.0, 50.0, 50.0])]}, category_ids=(3, 7))
    entry = {"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 50.0, 50.0], "score": 1.0}
    with pytest.raises(InputError, match=r"category ids \[1\]"):
        coco_evaluate(gt_path, [{**entry, "category_id": 1}])
    with pytest.raises(InputError, match=r"image ids \[5\]"):
        coco_evaluate(gt_path, [{**entry, "image_id": 5}])
    with pytest.raises(InputError, match="score"):
        coco_evaluate(gt_path, [{k: v for k, v in entry.items() if k != "score"}])


def test_missing_or_malformed_gt_json_raises_dataset_error(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DatasetError, match="nope.json"):
        coco_evaluate(missing, [])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DatasetError, match="broken.json"):
        coco_evaluate(broken, [])
    no_annotations = tmp_path / "partial.json"
    no_annotations.write_text(json.dumps({"images": [], "categories": []}))
    with pytest.raises(DatasetError, match="partial.json.*annotations"):
        coco_evaluate(no_annotations, [])
    bad_ann = tmp_path / "bad_ann.json"
    bad_ann.write_text(
        json.dumps({"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": [{"id": 1}]})
    )
    with pytest.raises(DatasetError, match="bad_ann.json.*annotations\\[0\\]"):
        coco_evaluate(bad_ann, [])


def test_gt_without_area_and_iscrowd_is_accepted(tmp_path):
    path = tmp_path / "gt.json"
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40]}
    path.write_text(json.dumps({"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": [ann]}))
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.5}]
    metrics = coco_evaluate(path, results)
    assert metrics["AP"] == pytest.approx(100.0)
    assert metrics["APm"] == pytest.approx(100.0)  # area 1600 taken from the box: medium
    assert math.isnan(metrics["APs"])


def test_backends(tmp_path, monkeypatch):
    gt_path = write_gt(tmp_path / "gt.json", {1: [(1, [0.0, 0.0, 50.0, 50.0])]})
    with pytest.raises(MsadkitError, match="unknown backend"):
        coco_evaluate(gt_path, [], backend="nope")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes the import fail
    with pytest.raises(MsadkitError, match="pip install faster-coco-eval"):
        coco_evaluate(gt_path, [], backend="faster_coco_eval")
    with pytest.raises(InputError, match="iou_type"):
        coco_evaluate(gt_path, [], iou_type="keypoints")


def test_format_ap_table():
    nan = float("nan")
    table = format_ap_table(
        {
            "teacher": {"AP": 42.84, "AP50": 61.0, "AP75": 46.26, "APs": nan, "APm": 45.0, "APl": 55.54},
            "student_w0.25": {"AP": 30.3, "AP50": 48.0, "AP75": 31.0, "APs": 15.0, "APm": 33.0},
        }
    )
    lines = table.splitlines()
    assert lines[0].split() == ["name", *AP_KEYS]
    assert lines[1].split() == ["teacher", "42.8", "61.0", "46.3", "-", "45.0", "55.5"]
    assert lines[2].split() == ["student_w0.25", "30.3", "48.0", "31.0", "15.0", "33.0", "-"]
    flat_metrics = {"AP": 1.0, "AP50": 2.0, "AP75": 3.0, "APs": 4.0, "APm": 5.0, "APl": 6.0}
    single = format_ap_table(flat_metrics).splitlines()
    assert single[0].split() == list(AP_KEYS)
    assert single[1].split() == ["1.0", "2.0", "3.0", "4.0", "5.0", "6.0"]
