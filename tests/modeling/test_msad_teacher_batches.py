"""MSAD teacher inference without image sizes on a batch larger than its three colour channels."""

import torch

from msadkit.config import load_config
from msadkit.modeling.registry import build_model


def test_four_images_without_image_sizes_give_four_results_like_one_by_one():
    torch.manual_seed(0)
    overrides = [
        "model.fpn.out_channels=32",
        "model.fcos.num_convs=1",
        "model.num_classes=3",
        "model.fcos.score_thresh=0.0",
    ]
    teacher = build_model(load_config("msad/msad_teacher_demo", overrides)).eval()
    images = torch.randn(4, 3, 256, 256)
    with torch.no_grad():
        together = teacher(images)
        alone = [teacher(images[i : i + 1])[0] for i in (0, 3)]
    assert len(together) == 4
    for found, expected in zip((together[0], together[3]), alone):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(found[key], expected[key], rtol=1e-4, atol=1e-4)
