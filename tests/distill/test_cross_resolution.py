"""Every term across resolutions: a high-resolution teacher, a student on the 0.5x copy, student
level l paired with teacher level l+1 (docs/methods.md §1.2)."""

from __future__ import annotations

import pytest
import torch

from msadkit.config import load_config
from msadkit.distill.build import check_resolution_pairing
from msadkit.distill.distiller import Distiller
from msadkit.distill.registry import TERMS, build_term
from msadkit.errors import ConfigError
from msadkit.modeling.detectors.dense_detector import downsample_nearest
from msadkit.modeling.registry import build_model

# Options a term needs on the tiny models (one tower conv) beyond its defaults.
TERM_OPTIONS: dict[str, dict] = {"crosskd": {"reused_teacher_head_idx": 1}}
# The MSAD term's ramp would give 0 at iteration 0; the pairing is what is tested here.
ITERATION = 10_000


def _config(tmp_path, tiny_overrides, *, arch: str, resolution: str, extra=()):
    overrides = tiny_overrides(tmp_path / f"{arch}-{resolution}", arch=arch) + [
        f"model.resolution={resolution}",
        "data.size_divisibility=256",
        "model.num_classes=3",
        *extra,
    ]
    return load_config("fcos_demo", overrides)


def _pair(tmp_path, tiny_overrides, arch: str):
    torch.manual_seed(0)
    teacher_config = _config(tmp_path, tiny_overrides, arch=arch, resolution="high")
    student_config = _config(
        tmp_path, tiny_overrides, arch=arch, resolution="low", extra=["distill.cross_resolution=true"]
    )
    return build_model(student_config), build_model(teacher_config), student_config, teacher_config


def _batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 256, 256, generator=generator)
    targets = [
        {"boxes": torch.tensor([[20.0, 30.0, 120.0, 150.0], [140.0, 10.0, 250.0, 90.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[60.0, 60.0, 200.0, 230.0]]), "labels": torch.tensor([1])},
    ]
    return images, [(256, 256), (256, 256)], targets


def test_the_student_sees_the_half_size_copy_and_its_levels_pair_with_the_teachers_next(tmp_path, tiny_overrides):
    student, teacher, _, _ = _pair(tmp_path, tiny_overrides, "fcos")
    images, sizes, targets = _batch()
    seen = []
    student.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    student_levels = student.select_levels(student.extract_features(images))
    assert torch.equal(seen[0], downsample_nearest(images, 2)) and seen[0].shape[-2:] == (128, 128)
    teacher_levels = teacher.distillation_outputs(images, sizes, need_predictions=False).levels
    # Student p2..p6 of the 128 px copy and teacher p3..p7 of the 256 px image: 32, 16, 8, 4, 2 cells.
    assert [tuple(level.shape[-2:]) for level in student_levels] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert [level.shape for level in student_levels] == [level.shape for level in teacher_levels]


@pytest.mark.parametrize("arch", ["fcos", "retinanet"])
@pytest.mark.parametrize("kind", sorted(TERMS))
def test_every_term_trains_a_low_resolution_student_of_a_high_resolution_teacher(tmp_path, tiny_overrides, kind, arch):
    student, teacher, student_config, teacher_config = _pair(tmp_path, tiny_overrides, arch)
    check_resolution_pairing(student_config, teacher, teacher_config)
    term = build_term({"type": kind, **TERM_OPTIONS.get(kind, {})}, student=student, teacher=teacher)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    distiller.iteration = ITERATION
    images, sizes, targets = _batch()
    losses = distiller(images, sizes, targets)
    distill_keys = [key for key in losses if key.startswith(term.name)]
    assert distill_keys, f"{kind} returned no loss on a cross-resolution pair"
    assert all(torch.isfinite(losses[key]) for key in distill_keys)
    total = sum(losses[key] for key in distill_keys)
    total.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads), f"{kind}: no gradient reached the student"
    assert all(p.grad is None for p in teacher.parameters())


def test_pairs_the_key_cannot_align_are_refused_before_training(tmp_path, tiny_overrides):
    student, teacher, student_config, teacher_config = _pair(tmp_path, tiny_overrides, "fcos")
    without_key = {**student_config, "distill": {**student_config["distill"], "cross_resolution": False}}
    with pytest.raises(ConfigError, match="set distill.cross_resolution=true"):
        check_resolution_pairing(without_key, teacher, teacher_config)
    high_student = {**student_config, "model": {**student_config["model"], "resolution": "high"}}
    with pytest.raises(ConfigError, match="student has model.resolution=high, the teacher's run model.resolution=high"):
        check_resolution_pairing(high_student, teacher, teacher_config)
    coarse = {**student_config, "data": {**student_config["data"], "size_divisibility": 32}}
    with pytest.raises(ConfigError, match="set data.size_divisibility=256 \\(got 32\\)"):
        check_resolution_pairing(coarse, teacher, teacher_config)
