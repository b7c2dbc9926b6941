"""Both dense detectors refuse an image batch holding inf or NaN before any convolution, naming the
image: a bad image fails there instead of turning the losses NaN."""

import pytest
import torch

from msadkit.errors import InputError
from tests.modeling.test_fcos import make_fcos
from tests.modeling.test_retinanet import build_model as build_retinanet


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("build_detector", [make_fcos, build_retinanet], ids=["fcos", "retinanet"])
def test_non_finite_images_are_rejected(build_detector, bad):
    model = build_detector()
    images = torch.zeros(2, 3, 64, 64)
    images[1, 0, 3, 3] = bad
    with pytest.raises(InputError, match="inf or NaN.*\\[1\\]"):
        model.eval()(images)
