"""MSAD teacher: constructor defaults and checks, the image-batch check, the bottom-up passes each
eval branch counts, and what distillation gets by default."""

import copy

import pytest
import torch
from torch import nn

from msadkit.config import load_config
from msadkit.errors import ConfigError, InputError
from msadkit.modeling.detectors.msad_teacher import MSADTeacher
from msadkit.modeling.registry import build_model


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    overrides = ["model.fpn.out_channels=32", "model.fcos.num_convs=1", "model.num_classes=3"]
    return build_model(load_config("msad/msad_teacher_demo", overrides)).eval()


@pytest.mark.parametrize(
    ("branch", "expected_shapes"),
    [
        ("high", [(1, 3, 256, 512)]),
        ("low", [(1, 3, 128, 256)]),
        ("fused", [(1, 3, 256, 512), (1, 3, 128, 256)]),
    ],
)
def test_each_eval_branch_counts_only_its_own_bottom_up_passes(teacher, branch, expected_shapes):
    images = torch.arange(3 * 256 * 512, dtype=torch.float32).reshape(1, 3, 256, 512)
    teacher.eval_branch = branch
    try:
        inputs = teacher.bottom_up_inputs(images)
    finally:
        teacher.eval_branch = "fused"
    assert [tuple(x.shape) for x in inputs] == expected_shapes
    for x in inputs:
        # Full resolution is the batch itself, half resolution its every second row and column.
        reference = images if x.shape[-1] == 512 else images[:, :, ::2, ::2]
        assert torch.equal(x, reference)


def test_distillation_outputs_skip_the_head_unless_asked(teacher):
    torch.manual_seed(3)
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        default = teacher.distillation_outputs(images, [(256, 256)])
        asked = teacher.distillation_outputs(images, [(256, 256)], need_predictions=True)
    assert default.predictions is None
    assert asked.predictions is not None and len(asked.predictions["cls_logits"]) == 5


def test_constructor_defaults_are_the_papers_fused_weight_and_the_fused_branch(teacher):
    built = MSADTeacher(detector=teacher.detector, fusion=teacher.fusion)
    assert built.fused_loss_weight == 0.4
    assert built.eval_branch == "fused"
    assert built.low_features == ("p2", "p3", "p4", "p5", "p6")
    assert built.high_features == ("p3", "p4", "p5", "p6", "p7")


def test_a_backbone_that_does_not_list_its_levels_is_refused(teacher):
    detector = copy.deepcopy(teacher.detector)
    detector.backbone = nn.Identity()  # declares no out_features
    with pytest.raises(ValueError, match=r"the backbone does not return \['p3', 'p4', 'p5', 'p6', 'p7', 'p2'"):
        MSADTeacher(detector=detector, fusion=teacher.fusion)


def test_a_detector_on_downsampled_input_is_refused(teacher):
    detector = copy.deepcopy(teacher.detector)
    detector.input_downsample = 2
    with pytest.raises(ValueError, match="input_downsample=1"):
        MSADTeacher(detector=detector, fusion=teacher.fusion)


def test_non_finite_pixels_are_refused_naming_the_teacher_and_the_image(teacher):
    images = torch.zeros(2, 3, 256, 256)
    images[1, 2, 7, 9] = float("nan")
    with pytest.raises(InputError, match=r"^MSADTeacher: images contain inf or NaN values \(batch indices \[1\]\)$"):
        teacher.branch_features(images)
    with pytest.raises(InputError, match=r"^MSADTeacher: expected an image batch of shape \(N, 3, H, W\)"):
        teacher.branch_features(torch.zeros(1, 1, 256, 256))


def test_unpadded_batch_message_names_the_size_and_the_setting(teacher):
    message = (
        "the MSAD teacher needs a batch padded to a multiple of 256 so that its high- and low-resolution "
        "pyramids align, got 512x320; set data.size_divisibility=256"
    )
    with pytest.raises(ConfigError) as caught:
        teacher.branch_features(torch.zeros(1, 3, 512, 320))
    assert str(caught.value) == message
