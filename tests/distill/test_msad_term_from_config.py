"""The ``type: msad_feature`` config entry: every option reaches the term, every bad value or
misaligned student is one ConfigError that names the entry, the option and the fix."""

from __future__ import annotations

import pytest
from torch import nn

from msadkit.distill.registry import build_term
from msadkit.errors import ConfigError
from msadkit.modeling.detectors.fcos import FCOS
from msadkit.modeling.detectors.fusion import CrossingFeatureFusion
from msadkit.modeling.detectors.msad_teacher import MSADTeacher

ENTRY = "distill.losses type msad_feature: "


class LevelNames(nn.Module):
    """A stand-in FPN: only the attributes the term's builder reads (no forward is run)."""

    def __init__(self, channels: int, names: tuple[str, ...]) -> None:
        super().__init__()
        self.out_channels = channels
        self.out_features = names


def _fcos(levels: tuple[str, ...], *, channels: int, input_downsample: int) -> FCOS:
    return FCOS(
        backbone=LevelNames(channels, ("p2", "p3", "p4", "p5", "p6")),
        head=nn.Identity(),
        num_classes=2,
        in_features=levels,
        strides=tuple(2 ** int(name[1:]) for name in levels),
        input_downsample=input_downsample,
    )


def _three_level_msad_teacher(channels: int = 8) -> MSADTeacher:
    """Teacher on high-res p3..p5, paired with low-res p2..p4."""
    return MSADTeacher(
        detector=_fcos(("p3", "p4", "p5"), channels=channels, input_downsample=1),
        fusion=CrossingFeatureFusion(channels, reduction=4),
        low_features=("p2", "p3", "p4"),
    )


def _low_res_student(channels: int = 8, levels: tuple[str, ...] = ("p2", "p3", "p4")) -> FCOS:
    return _fcos(levels, channels=channels, input_downsample=2)


def _build(**options):
    return build_term({"type": "msad_feature", **options}, student=_low_res_student(), teacher=_three_level_msad_teacher())


def test_every_option_reaches_the_term():
    term = _build(name="loss_kd", weight=0.5, loss_type="mse", alpha=0.7, temperature=0.5, ramp_iters=0)
    assert (term.name, term.weight, term.loss_type) == ("loss_kd", 0.5, "mse")
    assert (term.alpha, term.temperature, term.ramp_iters) == (0.7, 0.5, 0)


def test_the_defaults_are_the_papers():
    term = _build()
    assert (term.name, term.weight, term.loss_type) == ("loss_msad_feature", 1.0, "l1")
    assert (term.alpha, term.temperature, term.ramp_iters) == (0.2, 3.0, 500)


def test_one_adapter_per_student_level_when_the_widths_differ():
    term = build_term(
        {"type": "msad_feature"}, student=_low_res_student(channels=4), teacher=_three_level_msad_teacher(channels=8)
    )
    assert term.num_levels == 3
    assert len(term.adapters) == 3
    assert (term.adapters[0].in_channels, term.adapters[0].out_channels) == (4, 8)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"loss_type": "huber"}, "loss_type must be one of ('l1', 'mse'), got 'huber'"),
        ({"ramp_iters": 2.5}, "ramp_iters must be an integer >= 0, got 2.5"),
        ({"ramp_iters": -1}, "ramp_iters must be an integer >= 0, got -1"),
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_entry_and_the_option(options, message):
    with pytest.raises(ConfigError) as caught:
        _build(**options)
    assert str(caught.value) == ENTRY + message


@pytest.mark.parametrize(
    "student",
    [
        _low_res_student(levels=("p3", "p4", "p5")),  # low-res input, but the teacher's high-res level names
        _fcos(("p2", "p3", "p4"), channels=8, input_downsample=1),  # the right names on the high-res input
    ],
)
def test_a_student_not_aligned_with_the_fused_levels_is_refused(student):
    with pytest.raises(ConfigError, match=r"^distill\.losses type msad_feature: an MSAD teacher's fused levels .*set model\.resolution=low"):
        build_term({"type": "msad_feature"}, student=student, teacher=_three_level_msad_teacher())


def test_a_student_without_an_fpn_is_named_as_the_student():
    student = _low_res_student()
    student.backbone = nn.Identity()  # no out_channels
    with pytest.raises(ConfigError, match=r"^distill\.losses type msad_feature: cannot tell the FPN channels of the student \(FCOS\)"):
        build_term({"type": "msad_feature"}, student=student, teacher=_three_level_msad_teacher())


def test_a_teacher_without_an_fpn_is_named_as_the_teacher():
    teacher = _three_level_msad_teacher()
    teacher.detector.backbone = nn.Identity()  # no out_channels
    with pytest.raises(ConfigError, match=r"^distill\.losses type msad_feature: cannot tell the FPN channels of the teacher \(MSADTeacher\)"):
        build_term({"type": "msad_feature"}, student=_low_res_student(), teacher=teacher)
