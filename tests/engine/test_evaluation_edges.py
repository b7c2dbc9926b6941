"""COCO evaluation's file reading and error texts at their edges: UTF-8 names, long category lists."""

from __future__ import annotations

import builtins
import json

import pytest
import torch

from msadkit.engine.evaluation import coco_evaluation as evaluation
from msadkit.engine.evaluation.coco_evaluation import coco_evaluate
from msadkit.engine.inference.coco_results import detections_to_coco
from msadkit.errors import InputError


def _gt(path, category_names):
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(category_names)]
    images = [{"id": 1, "width": 100, "height": 100, "file_name": "1.png"}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0]}]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}, ensure_ascii=False),
        encoding="utf-8",
    )
    return path


def test_ground_truth_with_non_ascii_names_is_read_as_utf8_whatever_the_platform_default(tmp_path, monkeypatch):
    # A text file opened without an explicit encoding gets ASCII here, as under the C locale.
    def ascii_by_default(file, mode="r", *args, encoding=None, **kwargs):
        if "b" not in mode and encoding is None:
            encoding = "ascii"
        return builtins.open(file, mode, *args, encoding=encoding, **kwargs)

    monkeypatch.setattr(evaluation, "open", ascii_by_default, raising=False)
    gt_path = _gt(tmp_path / "gt.json", ["caf\u00e9", "Stra\u00dfe"])
    perfect = [{"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.9}]
    assert coco_evaluate(gt_path, perfect)["AP"] == pytest.approx(100.0)


def test_unknown_category_error_lists_the_first_twenty_categories(tmp_path):
    gt_path = _gt(tmp_path / "gt.json", [f"class{i}" for i in range(1, 26)])
    entry = {"image_id": 1, "category_id": 99, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.9}
    with pytest.raises(InputError) as error:
        coco_evaluate(gt_path, [entry])
    assert f"(its categories are {list(range(1, 21))})" in str(error.value)


def test_results_that_do_not_fit_name_the_ground_truth_file(tmp_path):
    gt_path = _gt(tmp_path / "gt.json", ["a", "b"])
    entry = {"image_id": 7, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 40.0], "score": 0.9}
    with pytest.raises(InputError, match=r"image ids \[7\] that .*gt\.json does not have"):
        coco_evaluate(gt_path, [entry])


def test_boxes_with_five_columns_are_refused():
    detection = {"boxes": torch.zeros(1, 5), "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.int64)}
    with pytest.raises(InputError, match=r"detections\[0\] has boxes \(1, 5\).*expected \(D, 4\)"):
        detections_to_coco([detection], [1], [1.0], [1])


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_no_detection_at_all_scores_zero_with_either_backend(tmp_path, backend):
    pytest.importorskip(backend)
    gt_path = _gt(tmp_path / "gt.json", ["a", "b"])
    metrics = coco_evaluate(gt_path, [], backend=backend)
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0
