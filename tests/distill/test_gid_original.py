"""GID selection as the public reproduction runs it: top-k before the size filter, a 10 px
minimum side, and boxes clipped to each image's own size (docs/deviations.md)."""

import torch

from msadkit.distill.gid.selection import (
    SELECTION_OPTIONS,
    clip_to_images,
    select_from_outputs,
    select_general_instances,
)
from msadkit.modeling.outputs import DenseOutputs


def _one_class(scores):
    """(1, R, 1) teacher probabilities and zero student probabilities: GI score = teacher score."""
    teacher = torch.tensor(scores).view(1, -1, 1)
    return teacher, torch.zeros_like(teacher)


def test_top_k_first_can_leave_fewer_candidates_than_filter_first():
    # Three far-apart boxes; the best-scoring one is 4 px high, below a 10 px minimum side.
    teacher, student = _one_class([0.9, 0.8, 0.7])
    boxes = torch.tensor([[[0.0, 0.0, 40.0, 4.0], [100.0, 0.0, 140.0, 40.0], [200.0, 0.0, 240.0, 40.0]]])
    common = dict(top_k=10, min_box_size=10.0, pre_nms_top_k=2)
    (filtered,) = select_general_instances(teacher, student, boxes, boxes, selection_order="filter_first", **common)
    (topk,) = select_general_instances(teacher, student, boxes, boxes, selection_order="top_k_first", **common)
    # filter_first: the small box goes, the top 2 of the rest are locations 1 and 2.
    assert filtered.indices.tolist() == [1, 2]
    # top_k_first: the top 2 are locations 0 and 1, then the small location 0 goes.
    assert topk.indices.tolist() == [1]
    assert SELECTION_OPTIONS["selection_order"] == "filter_first"


def test_boxes_are_clipped_to_each_images_own_size():
    boxes = torch.tensor([[[-5.0, 10.0, 90.0, 70.0]], [[-5.0, 10.0, 90.0, 70.0]]])
    # Image 0 is 50 x 60 (h x w) inside a padded 64 x 96 batch, image 1 fills it.
    clipped = clip_to_images(boxes, [(50, 60), (64, 96)])
    assert clipped.tolist() == [[[0.0, 10.0, 60.0, 50.0]], [[0.0, 10.0, 90.0, 64.0]]]


def test_select_from_outputs_uses_the_valid_size_of_each_image():
    # One location per image whose box reaches into the padding; padded batch 64 x 96.
    boxes = torch.tensor([[[40.0, 40.0, 90.0, 60.0]], [[40.0, 40.0, 90.0, 60.0]]])
    scores = torch.tensor([[[0.9]], [[0.9]]])
    teacher = DenseOutputs(torch.zeros(2, 1, 1), torch.zeros(2, 1, 4), boxes, scores)
    student = DenseOutputs(torch.zeros(2, 1, 1), torch.zeros(2, 1, 4), boxes, torch.zeros_like(scores))
    options = {k: v for k, v in SELECTION_OPTIONS.items() if k != "fcos_centerness"}
    options["min_box_size"] = 10.0
    small, full = select_from_outputs(teacher, student, [(48, 48), (64, 96)], **options)
    # Image 0 (48 x 48): the box becomes 40..48 x 40..48, 8 px wide, and is dropped; clipping to
    # the padded batch would have kept it as 40..90 x 40..60.
    assert len(small) == 0
    assert full.boxes.tolist() == [[40.0, 40.0, 90.0, 60.0]]
