"""RetinaNet anchor matching and target checks at their boundaries (values chosen by hand)."""

from __future__ import annotations

import pytest
import torch

from msadkit.errors import InputError
from msadkit.modeling.detectors.anchor_matching import (
    BACKGROUND,
    IGNORE,
    checked_targets,
    match_anchors,
)


def test_iou_exactly_at_each_threshold_falls_on_the_documented_side():
    # 0.25 and 0.5 are exact in binary: best IoU == low is ignored (not < low), == high is foreground.
    iou = torch.tensor([[0.25, 0.5, 0.2]])
    matched = match_anchors(iou, thresholds=(0.25, 0.5), allow_low_quality_matches=False)
    assert matched.tolist() == [IGNORE, 0, BACKGROUND]


def test_no_boxes_gives_int64_background_on_the_device_of_the_ious():
    # The meta device stands in for an accelerator: the answer must follow the input, not the CPU.
    for device in ("cpu", "meta"):
        matched = match_anchors(torch.empty(0, 3, device=device))
        assert matched.dtype == torch.int64
        assert matched.device.type == device
        assert matched.shape == (3,)
    assert match_anchors(torch.empty(0, 3)).tolist() == [BACKGROUND] * 3


def test_an_image_without_objects_may_give_its_boxes_as_a_flat_empty_tensor():
    ((boxes, labels),) = checked_targets([{"boxes": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}], 3)
    assert boxes.shape == (0, 4) and boxes.dtype == torch.float32
    assert labels.shape == (0,) and labels.dtype == torch.int64


def test_boxes_of_zero_width_or_height_are_valid():
    # x2 >= x1 and y2 >= y1 is the rule: a line or a point is a box the loader may produce.
    boxes = torch.tensor([[2.0, 3.0, 2.0, 7.0], [1.0, 4.0, 6.0, 4.0], [5.0, 5.0, 5.0, 5.0]])
    ((checked, labels),) = checked_targets([{"boxes": boxes, "labels": torch.tensor([0, 1, 2])}], 3)
    assert torch.equal(checked, boxes)
    assert labels.tolist() == [0, 1, 2]


def test_float_labels_are_rejected_even_inside_the_class_range():
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 2.0, 2.0]])
    with pytest.raises(InputError, match=r"integer classes in \[0, 3\)"):
        checked_targets([{"boxes": boxes, "labels": torch.tensor([0.0, 1.0])}], 3)


def test_label_count_error_names_the_number_of_boxes():
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(InputError, match=r"targets\[0\]\['labels'\] must have shape \(3,\) to match the boxes"):
        checked_targets([{"boxes": boxes, "labels": torch.tensor([0, 1])}], 3)
