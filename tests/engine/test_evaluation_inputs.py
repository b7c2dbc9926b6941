"""COCO evaluation's input handling: exact error texts, float64 box arithmetic, odd but valid
inputs, ground-truth files with gaps, and the optional backend's captured summary."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from msadkit.engine.evaluation.coco_evaluation import (
    check_backend,
    coco_evaluate,
    coco_evaluate_with_summary,
)
from msadkit.engine.inference.coco_results import detections_to_coco
from msadkit.errors import ConfigError, DatasetError, InputError, MsadkitError


def _write(path, images, annotations, categories):
    path.write_text(
        json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}
        )
    )
    return path


def _one_box_gt(path, bbox=(10.0, 10.0, 40.0, 40.0), image_ids=(1,)):
    images = [{"id": i, "width": 200, "height": 200} for i in image_ids]
    annotations = [
        {"id": 1, "image_id": image_ids[0], "category_id": 1, "bbox": list(bbox)}
    ]
    return _write(path, images, annotations, [{"id": 1, "name": "a"}])


def _entry(**changes):
    return {
        "image_id": 1,
        "category_id": 1,
        "bbox": [10.0, 10.0, 40.0, 40.0],
        "score": 0.9,
        **changes,
    }


# detections_to_coco ------------------------------------------------------------------------------


def test_a_detection_without_labels_is_named_with_the_missing_key():
    detection = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1)}
    with pytest.raises(InputError) as error:
        detections_to_coco([detection], [1], [1.0], [1])
    assert (
        str(error.value) == "detections_to_coco: detections[0] lacks key(s) ['labels']"
    )


def test_boxes_scores_and_labels_of_different_lengths_are_refused_with_their_shapes():
    detection = {
        "boxes": torch.zeros(2, 4),
        "scores": torch.ones(1),
        "labels": torch.zeros(2, dtype=torch.int64),
    }
    with pytest.raises(InputError) as error:
        detections_to_coco([detection], [1], [1.0], [1])
    assert str(error.value) == (
        "detections_to_coco: detections[0] has boxes (2, 4), scores (1,), labels (2,); expected (D, 4), (D,), (D,)"
    )


def test_float32_boxes_are_rescaled_in_float64():
    # 1/3 is not a float32 number: float32 arithmetic would be off in the 8th digit.
    detection = {
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 7.0]], dtype=torch.float32),
        "scores": torch.tensor([0.5]),
        "labels": torch.tensor([0]),
    }
    (result,) = detections_to_coco([detection], [1], [3.0], [1])
    x1, y1, x2, y2 = 1.0 / 3.0, 2.0 / 3.0, 11.0 / 3.0, 7.0 / 3.0
    assert result["bbox"] == [x1, y1, x2 - x1, y2 - y1]


def test_float_labels_and_plain_lists_are_accepted():
    detection = {
        "boxes": [[0.0, 0.0, 4.0, 2.0]],
        "scores": [0.25],
        "labels": torch.tensor([1.0]),
    }
    (result,) = detections_to_coco([detection], [5], [1.0], [3, 7])
    assert result == {
        "image_id": 5,
        "category_id": 7,
        "bbox": [0.0, 0.0, 4.0, 2.0],
        "score": 0.25,
    }
    empty = {"boxes": [], "scores": [], "labels": []}
    assert detections_to_coco([empty], [5], [1.0], [3, 7]) == []


# coco_evaluate: results and image_ids that do not fit ----------------------------------------


def test_more_than_ten_unknown_image_ids_list_the_first_ten(tmp_path):
    gt_path = _one_box_gt(tmp_path / "gt.json")
    with pytest.raises(InputError) as error:
        coco_evaluate(gt_path, [], image_ids=range(100, 112))
    assert (
        str(error.value)
        == f"coco_evaluate: image_ids {list(range(100, 110))} are not in {gt_path}"
    )


def test_more_than_ten_bad_image_or_category_ids_in_results_list_the_first_ten(
    tmp_path,
):
    gt_path = _one_box_gt(tmp_path / "gt.json")
    bad_images = [_entry(image_id=i) for i in range(100, 112)]
    with pytest.raises(InputError) as error:
        coco_evaluate(gt_path, bad_images)
    assert str(error.value) == (
        f"coco_evaluate: results name image ids {list(range(100, 110))} that {gt_path} does not have"
    )
    bad_categories = [_entry(category_id=c) for c in range(100, 112)]
    with pytest.raises(InputError) as error:
        coco_evaluate(gt_path, bad_categories)
    assert str(error.value) == (
        f"coco_evaluate: results name category ids {list(range(100, 110))} that {gt_path} does "
        "not have (its categories are [1])"
    )


# coco_evaluate: ground-truth files ------------------------------------------------------------


ANNOTATION = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}


@pytest.mark.parametrize(
    "images, annotations, categories, problem",
    [
        pytest.param(
            [{"width": 4}],
            [ANNOTATION],
            [{"id": 1}],
            "images[0] has no 'id'",
            id="image-without-id",
        ),
        pytest.param(
            [{"id": 1}],
            [ANNOTATION],
            [{"id": 1}, {"name": "b"}],
            "categories[1] has no 'id'",
            id="category-without-id",
        ),
        pytest.param(
            [{"id": 1}],
            [{**ANNOTATION, "bbox": [0, 0, 4]}],
            [{"id": 1}],
            "annotations[0] bbox [0, 0, 4] is not [x, y, w, h]",
            id="bbox-with-three-numbers",
        ),
    ],
)
def test_a_malformed_ground_truth_file_is_a_dataset_error(
    tmp_path, images, annotations, categories, problem
):
    gt_path = _write(tmp_path / "gt.json", images, annotations, categories)
    with pytest.raises(DatasetError) as error:
        coco_evaluate(gt_path, [])
    assert str(error.value) == f"COCO ground-truth file {gt_path}: {problem}"


def test_a_missing_area_is_width_times_height(tmp_path):
    # 100 x 20 = 2000 px: medium (32^2 <= area < 96^2); height squared (400) or a ratio would be small.
    gt_path = _one_box_gt(tmp_path / "gt.json", bbox=(0.0, 0.0, 100.0, 20.0))
    metrics = coco_evaluate(gt_path, [_entry(bbox=[0.0, 0.0, 100.0, 20.0])])
    assert metrics["APm"] == pytest.approx(100.0)
    assert (
        metrics["APs"] != metrics["APs"] and metrics["APl"] != metrics["APl"]
    )  # NaN: no small or large gt


# backends ---------------------------------------------------------------------------------------


def test_an_unknown_backend_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        coco_evaluate(_one_box_gt(tmp_path / "gt.json"), [], backend="nope")
    assert (
        str(error.value)
        == "coco_evaluate: unknown backend 'nope'; use one of pycocotools, faster_coco_eval"
    )
    with pytest.raises(ConfigError) as error:
        check_backend("nope", argument="trainer.eval_backend")
    assert str(error.value).startswith("trainer.eval_backend: unknown backend 'nope'")


def test_a_missing_fast_backend_names_the_argument_and_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # makes the import fail
    with pytest.raises(MsadkitError) as error:
        coco_evaluate(_one_box_gt(tmp_path / "gt.json"), [], backend="faster_coco_eval")
    assert str(error.value) == (
        "coco_evaluate: backend 'faster_coco_eval' needs the optional package faster-coco-eval; install it with "
        "`pip install msadkit[fast-eval]` (or `pip install faster-coco-eval`), or use backend 'pycocotools'"
    )


@pytest.mark.parametrize(
    "results", [[], [_entry()]], ids=["no_detection", "one_detection"]
)
def test_the_fast_backend_summary_is_captured_like_pycocotools(
    tmp_path, capsys, caplog, results
):
    pytest.importorskip("faster_coco_eval")
    gt_path = _one_box_gt(tmp_path / "gt.json")
    metrics, summary = coco_evaluate_with_summary(
        gt_path, results, backend="faster_coco_eval"
    )
    expected_ap = 100.0 if results else 0.0
    assert metrics["AP"] == pytest.approx(expected_ap)
    ap_line = f"Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = {expected_ap / 100:.3f}"
    assert ap_line in summary
    assert capsys.readouterr().out == ""
    assert "Average Precision" not in caplog.text
