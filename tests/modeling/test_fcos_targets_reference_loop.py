"""FCOS locations and target assignment against a plain per-location, per-box reference loop.

The boxes have integer corners on the same grid as the location centres, so the reference loop
(Python floats) and the vectorised assignment (float32) see exactly the same distances, and many
locations sit exactly on a box side, on the edge of the centre region or on a size-range bound.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from msadkit.modeling.detectors.fcos_targets import (
    DEFAULT_SIZES_OF_INTEREST,
    assign_fcos_targets,
    centerness_target,
    compute_locations,
)


def reference_locations(shapes, strides):
    out = []
    for (height, width), stride in zip(shapes, strides):
        out.append([(j * stride + stride // 2, i * stride + stride // 2) for i in range(height) for j in range(width)])
    return out


def reference_assign(shapes, strides, targets, num_classes, sizes, radius):
    """Per image ``(labels, matched, reg)`` as Python lists, one entry per location over all levels."""
    results = []
    for target in targets:
        boxes = target["boxes"].tolist()
        gt_labels = target["labels"].tolist()
        labels, matched, reg = [], [], []
        for points, stride, (low, high) in zip(reference_locations(shapes, strides), strides, sizes):
            for x, y in points:
                best, best_area = -1, None
                for index, (x1, y1, x2, y2) in enumerate(boxes):
                    sides = (x - x1, y - y1, x2 - x, y2 - y)
                    if not low <= max(sides) <= high:
                        continue
                    if radius > 0:
                        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, radius * stride
                        inside = max(cx - r, x1) < x < min(cx + r, x2) and max(cy - r, y1) < y < min(cy + r, y2)
                    else:
                        inside = min(sides) > 0
                    area = (x2 - x1) * (y2 - y1)
                    if inside and (best_area is None or area < best_area):
                        best, best_area = index, area
                if best < 0:
                    labels.append(num_classes)
                    matched.append(-1)
                    reg.append([0.0, 0.0, 0.0, 0.0])
                else:
                    x1, y1, x2, y2 = boxes[best]
                    labels.append(gt_labels[best])
                    matched.append(best)
                    reg.append([(x - x1) / stride, (y - y1) / stride, (x2 - x) / stride, (y2 - y) / stride])
        results.append((labels, matched, reg))
    return results


def integer_boxes(rng: random.Random, count: int, size: int, max_side: int):
    rows = []
    for _ in range(count):
        w, h = rng.randint(1, max_side), rng.randint(1, max_side)
        x1, y1 = rng.randint(0, size - w), rng.randint(0, size - h)
        rows.append([x1, y1, x1 + w, y1 + h])
    return rows


def make_targets(seed: int, counts, size: int, max_side: int, num_classes: int):
    rng = random.Random(seed)
    targets = []
    for count in counts:
        rows = integer_boxes(rng, count, size, max_side)
        if count >= 3:
            # A copy of a box (same area, later index, other label) and a box of the same area
            # but another shape exercise the first-box-wins tie-break.
            x1, y1, x2, y2 = rows[0]
            rows[1] = [x1, y1, x2, y2]
            rows[2] = [x1 + 1, y1 + 1, x1 + 1 + (y2 - y1), y1 + 1 + (x2 - x1)]
        labels = [rng.randrange(num_classes) for _ in rows]
        if count >= 2:
            labels[1] = (labels[0] + 1) % num_classes
        targets.append(
            {
                "boxes": torch.tensor(rows, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.long),
            }
        )
    return targets


def assert_matches_reference(shapes, strides, targets, num_classes, sizes, radius, **kwargs):
    locations = compute_locations(shapes, strides)
    out = assign_fcos_targets(locations, strides, targets, num_classes, **kwargs)
    expected = reference_assign(shapes, strides, targets, num_classes, sizes, radius)
    num_points = sum(h * w for h, w in shapes)
    assert out.labels.shape == out.matched_gt.shape == (len(targets), num_points)
    assert out.reg_targets.shape == (len(targets), num_points, 4)
    assert out.labels.dtype == out.matched_gt.dtype == torch.long and out.reg_targets.dtype == torch.float32
    for image, (labels, matched, reg) in enumerate(expected):
        assert out.labels[image].tolist() == labels, f"labels of image {image}"
        assert out.matched_gt[image].tolist() == matched, f"matched boxes of image {image}"
        torch.testing.assert_close(out.reg_targets[image], torch.tensor(reg), rtol=0, atol=0)
    return out


def test_locations_match_a_loop_for_odd_strides_and_non_square_levels():
    shapes, strides = [(2, 3), (3, 1), (1, 2)], [5, 3, 7]
    locations = compute_locations(shapes, strides)
    assert len(locations) == 3
    for level, expected in zip(locations, reference_locations(shapes, strides)):
        assert level.dtype == torch.float32 and level.shape == (len(expected), 2)
        assert level.tolist() == [[float(x), float(y)] for x, y in expected]
    explicit = compute_locations(shapes, strides, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(locations, explicit))


def test_locations_raise_no_warning():
    # torch.meshgrid warns (once per process, hence set_warn_always) when the indexing is not
    # given; the grid must not bother users with it.
    was_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (level,) = compute_locations([(2, 3)], [4])
    finally:
        torch.set_warn_always(was_always)
    assert level.tolist() == [[2.0, 2.0], [6.0, 2.0], [10.0, 2.0], [2.0, 6.0], [6.0, 6.0], [10.0, 6.0]]


SHAPES = [(16, 16), (8, 8), (4, 4)]
STRIDES = [8, 16, 32]
SIZES = [(-1.0, 24.0), (24.0, 48.0), (48.0, float("inf"))]


@pytest.mark.parametrize("radius", [1.5, 1.0, 0.75, 0.0])
def test_assignment_matches_reference_loop(radius):
    targets = make_targets(seed=7, counts=[6, 0, 3, 1], size=128, max_side=80, num_classes=4)
    out = assert_matches_reference(
        SHAPES, STRIDES, targets, 4, SIZES, radius, sizes_of_interest=SIZES, center_sampling_radius=radius
    )
    # The case must be rich enough to test something: positives on every level, and more than
    # one box chosen in the first image.
    positive = out.labels != 4
    assert positive[:, :256].any() and positive[:, 256:320].any()
    assert len(set(out.matched_gt[0][positive[0]].tolist())) > 1
    assert not positive[1].any()


def test_default_radius_and_sizes_of_interest_match_reference_loop():
    shapes, strides = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], [8, 16, 32, 64, 128]
    targets = make_targets(seed=3, counts=[5, 4], size=128, max_side=128, num_classes=3)
    targets[1]["boxes"][0] = torch.tensor([0.0, 0.0, 128.0, 128.0])  # max distance 64+ on level 1
    out = assert_matches_reference(shapes, strides, targets, 3, DEFAULT_SIZES_OF_INTEREST, 1.5)
    assert (out.labels[:, 256:320] != 3).any()


def test_size_range_bounds_are_both_inclusive():
    # One level, stride 8, location (12, 12). Box (4, 4, 36, 28): sides l=8, t=8, r=24, b=16, max 24.
    locations = compute_locations([(4, 4)], [8])
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 36.0, 28.0]]), "labels": torch.tensor([1])}]
    index = 1 * 4 + 1
    for sizes, positive in [
        ([(24.0, 30.0)], True),
        ([(10.0, 24.0)], True),
        ([(24.5, 30.0)], False),
        ([(0.0, 23.5)], False),
    ]:
        out = assign_fcos_targets(locations, [8], targets, 2, sizes_of_interest=sizes, center_sampling_radius=0)
        assert bool(out.labels[0, index] == 1) is positive, sizes


def test_centre_region_edges_are_exclusive_and_unit_distances_count():
    # Stride 8, radius 1.0: the centre region is the box centre +- 8, clipped to the box.
    # Column x = 12 against boxes whose region starts exactly at 12 (out) or at 11 (in, distance 1).
    locations = compute_locations([(4, 4)], [8])
    boxes = torch.tensor([[4.0, 4.0, 36.0, 36.0], [3.0, 3.0, 35.0, 35.0]])  # centres 20 and 19
    for box, expected_in in [(boxes[0], False), (boxes[1], True)]:
        targets = [{"boxes": box[None], "labels": torch.tensor([0])}]
        out = assign_fcos_targets(locations, [8], targets, 1, sizes_of_interest=[(-1, 1e8)], center_sampling_radius=1.0)
        assert bool(out.labels[0, 1 * 4 + 1] == 0) is expected_in


def test_whole_box_sampling_edges_are_exclusive_and_unit_distances_count():
    locations = compute_locations([(2, 2)], [8])  # centres 4 and 12
    for box, expected in [([4.0, 4.0, 20.0, 20.0], [1, 1, 1, 0]), ([3.0, 3.0, 13.0, 13.0], [0, 0, 0, 0])]:
        targets = [{"boxes": torch.tensor([box]), "labels": torch.tensor([0])}]
        out = assign_fcos_targets(locations, [8], targets, 1, sizes_of_interest=[(-1, 1e8)], center_sampling_radius=0)
        assert out.labels[0].tolist() == expected, box


def test_no_images_and_all_empty_images():
    locations = compute_locations([(2, 2), (1, 1)], [8, 16])
    out = assign_fcos_targets(locations, [8, 16], [], 3, sizes_of_interest=SIZES)
    assert out.labels.shape == (0, 5) and out.matched_gt.shape == (0, 5) and out.reg_targets.shape == (0, 5, 4)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    out = assign_fcos_targets(locations, [8, 16], [empty, empty], 3, sizes_of_interest=SIZES)
    assert out.labels.tolist() == [[3] * 5] * 2 and out.matched_gt.tolist() == [[-1] * 5] * 2
    assert out.reg_targets.shape == (2, 5, 4) and not out.reg_targets.any()
    assert out.labels.dtype == out.matched_gt.dtype == torch.long
    # Degenerate but valid: no images and no locations at all.
    out = assign_fcos_targets(compute_locations([(0, 0)], [8]), [8], [], 3, sizes_of_interest=SIZES[:1])
    assert out.labels.shape == (0, 0) and out.reg_targets.shape == (0, 0, 4)


def test_integer_and_double_inputs_are_accepted():
    locations = compute_locations([(4, 4)], [8])
    targets = [
        {"boxes": torch.tensor([[0, 0, 32, 32]], dtype=torch.int32), "labels": torch.tensor([1], dtype=torch.int32)}
    ]
    out = assign_fcos_targets(locations, [8], targets, 2, sizes_of_interest=[(-1, 100)])
    assert out.labels.dtype == torch.long and out.reg_targets.dtype == torch.float32
    assert (out.labels[0] == 1).sum() == 4
    torch.testing.assert_close(out.reg_targets[0, 5], torch.tensor([1.5, 1.5, 2.5, 2.5]))


def test_too_few_sizes_of_interest_is_one_clear_error():
    locations = compute_locations([(2, 2), (1, 1), (1, 1)], [8, 16, 32])
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([0])}]
    with pytest.raises(ValueError, match="^3 levels but only 2 sizes of interest$"):
        assign_fcos_targets(locations, [8, 16, 32], targets, 1, sizes_of_interest=SIZES[:2])
    # As many sizes as levels is fine.
    assign_fcos_targets(locations, [8, 16, 32], targets, 1, sizes_of_interest=SIZES)


def test_centerness_target_matches_a_loop():
    gen = torch.Generator().manual_seed(0)
    ltrb = torch.rand(50, 4, generator=gen) * 10 + 0.01
    ltrb[0] = torch.tensor([3.0, 0.5, 3.0, 4.0])
    # Distances are in strides: a location near a small box has all four below 1.
    ltrb[1] = torch.tensor([0.5, 0.2, 0.25, 0.4])
    ltrb[2] = torch.tensor([0.1, 6.0, 0.8, 2.0])
    ltrb[3] = torch.tensor([5.0, 0.3, 2.5, 0.9])
    expected = [((min(l, r) / max(l, r)) * (min(t, b) / max(t, b))) ** 0.5 for l, t, r, b in ltrb.tolist()]
    torch.testing.assert_close(centerness_target(ltrb), torch.tensor(expected))
    torch.testing.assert_close(centerness_target(ltrb[1:2]), torch.tensor([0.5]))


def test_images_are_assigned_in_groups_that_bound_the_candidate_tensors(monkeypatch):
    # Each (n, R, M) candidate tensor must stay under the element limit where one image allows it:
    # with R*M = 32, a limit of 69 fits 2 images per group and a limit of 1 forces 1 per group.
    import msadkit.modeling.detectors.fcos_targets as fcos_targets_module

    group_sizes = []
    original = fcos_targets_module._match_locations

    def recording(points, level_stride, level_range, boxes, valid, **kwargs):
        group_sizes.append(boxes.shape[0])
        return original(points, level_stride, level_range, boxes, valid, **kwargs)

    monkeypatch.setattr(fcos_targets_module, "_match_locations", recording)
    locations = compute_locations([(4, 4)], [8])
    targets = make_targets(seed=11, counts=[2, 1, 0, 2, 1], size=32, max_side=24, num_classes=2)
    whole = assign_fcos_targets(locations, [8], targets, 2, sizes_of_interest=[(-1, 1e8)])
    assert group_sizes == [5]
    for limit, expected_groups in [(69, [2, 2, 1]), (1, [1, 1, 1, 1, 1])]:
        group_sizes.clear()
        monkeypatch.setattr(fcos_targets_module, "ASSIGNMENT_CHUNK_ELEMENTS", limit)
        grouped = assign_fcos_targets(locations, [8], targets, 2, sizes_of_interest=[(-1, 1e8)])
        assert group_sizes == expected_groups, limit
        assert torch.equal(grouped.labels, whole.labels) and torch.equal(grouped.matched_gt, whole.matched_gt)
        assert torch.equal(grouped.reg_targets, whole.reg_targets)
    assert (whole.labels != 2).any()
