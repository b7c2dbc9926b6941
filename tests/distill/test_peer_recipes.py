"""The packaged peer-method recipes (``peers/``): each names a packaged teacher, uses its term's
official options, builds, takes a distillation step and trains two iterations on a COCO-format set.

The runs keep each recipe's detectors, depths, heads, losses and solver settings and only shrink
what makes them slow: 64 px images of a small COCO-format set written here, a 32-channel FPN, a
random backbone calibrated on those images in place of the ImageNet weights, and a random teacher
checkpoint built from the teacher recipe the student names.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msadkit.config import list_packaged_configs, load_config
from msadkit.config.catalog import is_base_config
from msadkit.data.build import build_dataset, build_loader
from msadkit.data.synthetic import generate_synthetic_dataset
from msadkit.distill import crosskd, cwd, fgd, fitnet, mgd, pkd
from msadkit.distill.distiller import Distiller
from msadkit.distill.registry import TERMS, build_term
from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.trainer import build_training_model, train
from msadkit.modeling.backbones.resnet import TorchvisionResNet
from msadkit.modeling.image_batch import PixelNormalizer, to_model_input
from msadkit.modeling.norm import FrozenBatchNorm2d
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import load_checkpoint_file, load_state_dict_strict, save_atomic
from tests.conftest import tiny_training_overrides

PEER_TERMS = ("fitnet", "cwd", "pkd", "mgd", "fgd", "crosskd")
PEER_CONFIGS = [name for name in list_packaged_configs() if name.startswith("peers/") and not is_base_config(name)]
STUDENT_RECIPES = [name for name in PEER_CONFIGS if load_config(name)["distill"]["teacher"]]

# The options each recipe must give its term: the term's defaults (its official config), except where
# the recipe follows another official config than the one the defaults come from.
DEFAULTS = {
    "fitnet": fitnet.OPTIONS,
    "cwd": cwd.OPTIONS,
    "pkd": pkd.OPTIONS,
    "mgd": mgd.OPTIONS,
    "fgd": fgd.OPTIONS,
    "crosskd": crosskd.OPTIONS,
}
RECIPE_OPTIONS = {
    # PaddleDetection's RetinaNet CWD config: ChannelWiseDivergence weight 5.0 (docs/methods.md, "CWD").
    "peers/retinanet_R101_R50_cwd_2x": {"loss_weight": 5.0},
    # The official FCOS FGD config (docs/methods.md, "FGD").
    "peers/fcos_R101_R50_fgd_2x": {
        "temp": 0.8,
        "alpha_fgd": 0.0016,
        "beta_fgd": 0.0008,
        "gamma_fgd": 0.0008,
        "lambda_fgd": 8e-6,
    },
    # An FCOS student: CrossKD's FCOS defaults.
    "peers/fcos_R101_R50_crosskd_2x": crosskd.FCOS_DEFAULTS,
}
# (iterations, LR steps) of the schedule labels.
SCHEDULES = {"1x": (90_000, [60_000, 80_000]), "2x": (180_000, [120_000, 160_000])}


def _entries(name: str) -> list[dict]:
    return load_config(name)["distill"]["losses"]


def test_every_peer_term_has_a_recipe_and_every_recipe_a_peer_term():
    assert set(PEER_TERMS) <= set(TERMS)
    kinds = {entry["type"] for name in STUDENT_RECIPES for entry in _entries(name)}
    assert kinds == set(PEER_TERMS)
    # CrossKD and FGD report FCOS results as well as RetinaNet ones; PKD one across detectors.
    archs = {
        (entry["type"], load_config(name)["model"]["arch"]) for name in STUDENT_RECIPES for entry in _entries(name)
    }
    assert {("crosskd", "fcos"), ("crosskd", "retinanet"), ("fgd", "fcos"), ("fgd", "retinanet")} <= archs


@pytest.mark.parametrize("name", STUDENT_RECIPES)
def test_a_recipe_uses_its_terms_official_options(name):
    (entry,) = _entries(name)
    expected = {**DEFAULTS[entry["type"]], **RECIPE_OPTIONS.get(name, {})}
    given = {key: value for key, value in entry.items() if key not in ("type", "weight", "name")}
    assert given == expected
    assert entry["weight"] == 1.0


@pytest.mark.parametrize("name", PEER_CONFIGS)
def test_a_recipe_names_a_packaged_teacher_and_keeps_its_schedule(name):
    config = load_config(name)
    assert config["data"]["dataset"] == "coco"
    assert (config["data"]["test_short_side"], config["data"]["test_max_size"]) == (800, 1333)
    assert (config["solver"]["batch_size"], config["solver"]["base_lr"]) == (16, 0.01)
    assert (config["solver"]["max_iter"], config["solver"]["steps"]) == SCHEDULES[config["schedule"]]
    assert config["output_dir"] == f"runs/{name}"
    # MMDetection's warm-up (FCOS: a third of the rate) and L1 box loss; gradient clipping at 35
    # where the official config clips: FCOS, MGD and FGD.
    fcos = config["model"]["arch"] == "fcos"
    assert (config["solver"]["warmup_iters"], config["solver"]["warmup_factor"]) == (500, 0.3333 if fcos else 0.001)
    assert config["model"]["retinanet"]["smooth_l1_beta"] == 0.0
    kinds = {entry["type"] for entry in config["distill"]["losses"]}
    assert config["solver"]["clip_grad_norm"] == (35.0 if fcos or kinds & {"mgd", "fgd"} else 0.0)
    teacher = config["distill"]["teacher"]
    if teacher is None:
        assert config["role"] in ("teacher", "baseline")
        return
    assert config["role"] == "student"
    (teacher_name,) = [other for other in PEER_CONFIGS if load_config(other)["output_dir"] == teacher]
    teacher_config = load_config(teacher_name)
    assert teacher_config["role"] == "teacher"
    assert teacher_config["model"]["backbone"]["name"] == "resnet101"
    assert config["model"]["backbone"]["name"] == "resnet50"


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory):
    """A COCO-format dataset (json files and image folders) of 64 px images."""
    return generate_synthetic_dataset(tmp_path_factory.mktemp("coco") / "set", num_train=4, num_val=2, image_size=64)


@pytest.fixture(scope="module")
def coco_set(coco_dataset):
    """The overrides that train on ``coco_dataset``."""
    return [
        "data.dataset=coco",
        f"data.train_json={coco_dataset.train_json}",
        f"data.train_images={coco_dataset.image_root('train')}",
        f"data.val_json={coco_dataset.val_json}",
        f"data.val_images={coco_dataset.image_root('val')}",
    ]


def _normalised_images(folder) -> torch.Tensor:
    """The images of ``folder`` as the models see them (RGB, ImageNet mean and std)."""
    from PIL import Image

    pixels = [torch.from_numpy(np.array(Image.open(path).convert("RGB"))) for path in sorted(folder.iterdir())]
    images = torch.stack(pixels).permute(0, 3, 1, 2).float()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
    return (images - mean) / std


def calibrate_frozen_norms(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Set every frozen BatchNorm's statistics to those of its input on ``images``, layer after layer.

    A random ResNet-101 with frozen identity statistics gives FPN maps of about 1e4 and a squared-error
    term such as FitNet's a first gradient that no learning rate survives; calibrated on the training
    images, a random backbone stands in for an ImageNet-trained one.
    """

    def set_statistics(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)).clamp(min=1e-2))

    hooks = [m.register_forward_pre_hook(set_statistics) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()


@pytest.fixture(scope="module")
def backbone_weights(tmp_path_factory, coco_dataset):
    """``depth -> torchvision-format weights file`` of a random, calibrated ResNet, made once: the
    stand-in for the recipes' ``pretrained/resnet*_torchvision.pth``."""
    folder = tmp_path_factory.mktemp("pretrained")
    made: dict[int, str] = {}

    def weights(depth: int) -> str:
        if depth not in made:
            torch.manual_seed(depth)
            body = TorchvisionResNet(depth).eval()
            calibrate_frozen_norms(body, _normalised_images(coco_dataset.image_root("train")))
            path = folder / f"resnet{depth}.pth"
            torch.save(body.state_dict(), path)
            made[depth] = str(path)
        return made[depth]

    return weights


def _tiny(run, recipe: dict, coco_set: list[str], weights) -> list[str]:
    """The tiny sizes of the test runs. The recipe's head depth (CrossKD cuts the towers) and warm-up
    (the first iterations of a squared-error term need it) stay."""
    overrides = [
        item
        for item in tiny_training_overrides(run, arch=recipe["model"]["arch"])
        if "num_convs" not in item and not item.startswith("solver.warmup_iters=")
    ]
    depth = int(recipe["model"]["backbone"]["name"].removeprefix("resnet"))
    return overrides + coco_set + ["model.num_classes=4", f"model.backbone.weights={weights(depth)}"]


@pytest.fixture(scope="module")
def teacher_checkpoints(tmp_path_factory, coco_set, backbone_weights):
    """``teacher recipe name -> model_final.pth`` of a model built from it (calibrated random
    backbone, random FPN and head), made once."""
    folder = tmp_path_factory.mktemp("teachers")
    made: dict[str, str] = {}

    def checkpoint(name: str) -> str:
        if name not in made:
            config = load_config(
                name, _tiny(folder / name.replace("/", "_"), load_config(name), coco_set, backbone_weights)
            )
            torch.manual_seed(0)
            path = folder / f"{name.replace('/', '_')}.pth"
            save_atomic({"model": build_model(config).state_dict(), "config": config}, path)
            made[name] = str(path)
        return made[name]

    return checkpoint


def _loss_keys(entry: dict, records: list[dict]) -> set[str]:
    name = entry.get("name") or f"loss_{entry['type']}"
    return {key for key in records[0] if key == name or key.startswith(f"{name}_")}


def _student_config(run, name: str, coco_set, backbone_weights, teacher_checkpoints) -> dict:
    """The recipe at tiny sizes, distilling from a random teacher built from the recipe it names."""
    recipe = load_config(name)
    (teacher_name,) = [
        other for other in PEER_CONFIGS if load_config(other)["output_dir"] == recipe["distill"]["teacher"]
    ]
    config = load_config(
        name, _tiny(run, recipe, coco_set, backbone_weights) + [f"distill.teacher={teacher_checkpoints(teacher_name)}"]
    )
    # What the recipe sets stays: detector, backbone depth and norm, head, losses, clipping, warm-up.
    arch = recipe["model"]["arch"]
    assert config["model"]["arch"] == arch and config["model"][arch] == recipe["model"][arch]
    assert {**config["model"]["backbone"], "weights": None} == {**recipe["model"]["backbone"], "weights": None}
    assert config["distill"]["losses"] == recipe["distill"]["losses"]
    for key in ("clip_grad_norm", "warmup_iters", "warmup_factor"):
        assert config["solver"][key] == recipe["solver"][key]
    return config


@pytest.mark.parametrize("name", STUDENT_RECIPES)
def test_a_peer_recipe_builds_and_takes_a_distillation_step(
    tmp_path, coco_set, backbone_weights, teacher_checkpoints, name
):
    """Every recipe: student, teacher and term build, and one batch of the COCO set gives finite
    losses whose gradient reaches the student and the term's trained parts, not the teacher."""
    config = _student_config(tmp_path / "run", name, coco_set, backbone_weights, teacher_checkpoints)
    distiller = build_training_model(config)
    assert isinstance(distiller, Distiller)
    (entry,) = config["distill"]["losses"]
    (term,) = distiller.distill_losses
    assert type(term) is type(build_term(entry, student=distiller.student, teacher=distiller.teacher))
    batch = next(iter(build_loader(config, build_dataset(config, "train"), train=True)))
    pixels = PixelNormalizer(
        config["model"]["pixel_mean"], config["model"]["pixel_std"], config["model"]["pixel_format"]
    )
    batch = to_model_input(batch, pixels, "cpu")
    distiller.train()
    distiller.iteration = 1
    losses = distiller(batch.images, batch.image_sizes, batch.targets)
    keys = [key for key in losses if key == term.name or key.startswith(f"{term.name}_")]
    assert keys and all(torch.isfinite(losses[key]) for key in losses), {k: float(v) for k, v in losses.items()}
    sum(losses.values()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())
    trained = [p for p in term.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trained), f"{name}: a trained part of the term got no gradient"
    assert all(p.grad is None for p in distiller.teacher.parameters())


# Two recipes train in the default run (a RetinaNet and an FCOS student); the others with -m slow.
TRAINED_BY_DEFAULT = ("peers/retinanet_R101_R50_crosskd_2x", "peers/fcos_R101_R50_fgd_2x")


@pytest.mark.parametrize(
    "name",
    [name if name in TRAINED_BY_DEFAULT else pytest.param(name, marks=pytest.mark.slow) for name in STUDENT_RECIPES],
)
def test_a_peer_recipe_trains_two_iterations_on_a_coco_set(
    tmp_path, coco_set, backbone_weights, teacher_checkpoints, name
):
    run = tmp_path / "run"
    config = _student_config(run, name, coco_set, backbone_weights, teacher_checkpoints)
    assert train(config, evaluate=False) == run
    records = read_metrics(run / "metrics.jsonl")
    assert [r["iter"] for r in records] == [1, 2]
    (entry,) = config["distill"]["losses"]
    keys = _loss_keys(entry, records)
    assert keys, f"{name}: no {entry['type']} loss in metrics.jsonl: {sorted(records[0])}"
    values = [r[key] for r in records for key in sorted(keys)]
    # Finite: metrics.jsonl writes non-finite values as strings.
    assert all(isinstance(v, float) and math.isfinite(v) for v in values), values
    # The final weights are the student's alone: they load strictly into the plain detector.
    student = build_model(config)
    load_state_dict_strict(student, load_checkpoint_file(run / "model_final.pth")["model"], "model_final.pth")


def test_the_default_run_trains_a_retinanet_and_an_fcos_recipe():
    assert set(TRAINED_BY_DEFAULT) <= set(STUDENT_RECIPES)
    assert {load_config(name)["model"]["arch"] for name in TRAINED_BY_DEFAULT} == {"retinanet", "fcos"}
