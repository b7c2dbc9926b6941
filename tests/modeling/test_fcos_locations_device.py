"""FCOS locations are made on the device asked for, so a GPU run never mixes devices. The ``meta``
device stands in for a GPU: it checks placement without one."""

import torch

from msadkit.modeling.detectors.fcos_targets import compute_locations


def test_locations_are_made_on_the_requested_device():
    locations = compute_locations([(2, 3), (1, 2)], [8, 16], device="meta")
    assert [loc.device.type for loc in locations] == ["meta", "meta"]
    assert [tuple(loc.shape) for loc in locations] == [(6, 2), (2, 2)]
    assert all(loc.dtype == torch.float32 for loc in locations)
