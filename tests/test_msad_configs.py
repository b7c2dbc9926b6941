"""The packaged MSAD configs: they load, follow the paper's recipes and have its capacities."""

import contextlib
import io
import json

import pytest

from msadkit.analysis.model_flops import config_flops
from msadkit.cli import main
from msadkit.config import list_packaged_configs, load_config
from msadkit.modeling.registry import build_model

WIDTHS = {"025": 0.25, "050": 0.5, "075": 0.75, "100": 1.0}
# MSAD README (docs/methods.md §1.9): capacity of the teacher (high + low input) and of the student.
README_CAPACITY = {
    "025": (0.08, 0.02),
    "050": (0.31, 0.06),
    "075": (0.70, 0.14),
    "100": (1.25, 0.25),
}
# docs/methods.md §1.8: (batch, base LR, iterations, LR steps).
TEACHER_SCHEDULE = {
    "025": (16, 0.01, 90_000, [60_000, 80_000]),
    "050": (8, 0.01, 180_000, [120_000, 160_000]),
    "075": (8, 0.01, 180_000, [120_000, 160_000]),
    "100": (8, 0.01, 180_000, [120_000, 160_000]),
}
STUDENT_SCHEDULE = {
    "025": (32, 0.02, 45_000, [30_000, 40_000]),
    "050": (32, 0.01, 45_000, [30_000, 40_000]),
    "075": (32, 0.02, 45_000, [30_000, 40_000]),
    "100": (16, 0.01, 90_000, [60_000, 80_000]),
}

MSAD_CONFIGS = [name for name in list_packaged_configs() if name.startswith("msad/")]
_FLOPS: dict[str, dict] = {}


def flops(name: str) -> dict:
    # A small input keeps the count quick; capacity is defined at 800x1333 whatever the input.
    if name not in _FLOPS:
        _FLOPS[name] = config_flops(load_config(name), height=256, width=512)
    return _FLOPS[name]


def test_the_recipes_are_all_packaged():
    kinds = ("msad_teacher", "msad_student", "fcos_high", "fcos_low")
    expected = {f"msad/{kind}_w{w}" for kind in kinds for w in WIDTHS}
    expected |= {f"msad/{kind}_demo" for kind in ("msad_teacher", "msad_student", "fcos_high", "fcos_low")}
    assert expected <= set(MSAD_CONFIGS)


@pytest.mark.parametrize("name", list_packaged_configs())
def test_every_packaged_config_loads(name):
    config = load_config(name)
    if name.startswith("msad/"):
        assert config["data"]["size_divisibility"] == 256


@pytest.mark.parametrize("w", WIDTHS)
def test_recipe_schedules_and_wiring(w):
    teacher = load_config(f"msad/msad_teacher_w{w}")
    student = load_config(f"msad/msad_student_w{w}")
    for config, schedule in ((teacher, TEACHER_SCHEDULE[w]), (student, STUDENT_SCHEDULE[w])):
        solver = config["solver"]
        assert (solver["batch_size"], solver["base_lr"], solver["max_iter"], solver["steps"]) == schedule
        assert solver["warmup_iters"] == 500
        assert config["model"]["backbone"]["width"] == WIDTHS[w]
        assert config["data"]["dataset"] == "coco"
    assert teacher["model"]["arch"] == "msad_teacher"
    assert teacher["model"]["msad"]["fused_loss_weight"] == 0.4
    assert student["model"]["resolution"] == "low"
    assert student["distill"]["teacher"] == teacher["output_dir"]
    assert student["distill"]["init_student_from_teacher"] is True
    (term,) = student["distill"]["losses"]
    assert term["type"] == "msad_feature" and term["alpha"] == 0.2 and term["temperature"] == 3.0
    assert term["ramp_iters"] == 500
    for res in ("high", "low"):
        baseline = load_config(f"msad/fcos_{res}_w{w}")
        assert baseline["model"]["resolution"] == res and baseline["model"]["backbone"]["width"] == WIDTHS[w]
        assert baseline["solver"]["max_iter"] == 90_000


@pytest.mark.parametrize("w", WIDTHS)
def test_capacity_matches_the_msad_readme(w):
    teacher_capacity, student_capacity = README_CAPACITY[w]
    assert flops(f"msad/msad_teacher_w{w}")["capacity"] == pytest.approx(teacher_capacity, abs=0.015)
    assert flops(f"msad/msad_student_w{w}")["capacity"] == pytest.approx(student_capacity, abs=0.015)


@pytest.mark.parametrize("w", ["025"])
def test_counted_backbone_flops_are_high_plus_low(w):
    # Counted on the model, not by formula: the teacher's bottom-up network runs on the image and
    # on its half-size copy, the student's on the copy alone.
    high = flops(f"msad/fcos_high_w{w}")["backbone_gflops"]
    assert flops(f"msad/msad_teacher_w{w}")["backbone_gflops"] == pytest.approx(1.25 * high, rel=0.01)
    assert flops(f"msad/msad_student_w{w}")["backbone_gflops"] == pytest.approx(0.25 * high, rel=0.01)


def test_flops_command_reports_the_teacher_capacity():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["flops", "--config", "msad/msad_teacher_w100"]) == 0
    report = json.loads(out.getvalue())
    assert report["config_arch"] == "msad_teacher"
    assert report["capacity"] == pytest.approx(1.25, abs=0.015)
    assert report["input"] == [1024, 1536]


def test_demo_configs_build_and_the_student_demo_uses_the_teacher_demo():
    teacher = load_config("msad/msad_teacher_demo")
    student = load_config("msad/msad_student_demo")
    assert student["distill"]["teacher"] == teacher["output_dir"]
    assert student["model"]["backbone"]["width"] == teacher["model"]["backbone"]["width"]
    assert student["model"]["fpn"]["out_channels"] == teacher["model"]["fpn"]["out_channels"]
    for name in ("msad/msad_teacher_demo", "msad/msad_student_demo", "msad/fcos_high_demo", "msad/fcos_low_demo"):
        config = load_config(name)
        assert config["data"]["dataset"] == "synthetic"
        model = build_model(config)
        assert sum(p.numel() for p in model.parameters()) > 0
