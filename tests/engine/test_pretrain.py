"""`msadkit pretrain`: crops of the training stream, the official slimmable layout, the command."""

import json

import pytest
import torch

from msadkit.cli import main
from msadkit.config import load_config
from msadkit.data import generate_synthetic_dataset
from msadkit.data.synthetic_crops import BACKGROUND_LABEL, synthetic_training_crops
from msadkit.engine.train.pretrain import PretrainSettings, official_state_dict, pretrain_backbone
from msadkit.errors import CheckpointError, ConfigError
from msadkit.modeling.backbones.slimmable import load_slimmable_checkpoint, slimmable_resnet50
from msadkit.modeling.builders import build_bottom_up
from tests.conftest import tiny_training_overrides

TINY = ["--num-images", "6", "--image-size", "64", "--crop-size", "32", "--iterations", "2", "--batch-size", "4"]


def test_crops_come_from_the_training_images_one_per_object_plus_background(tmp_path):
    dataset = generate_synthetic_dataset(tmp_path / "synth", num_train=5, num_val=2, image_size=64)
    annotations = json.loads(dataset.train_json.read_text())["annotations"]
    images, labels = synthetic_training_crops(num_images=5, image_size=64, crop_size=32)
    objects = labels[labels != BACKGROUND_LABEL]
    # The training split's objects, class by class (category id = label + 1), and nothing else.
    expected = torch.bincount(torch.tensor([a["category_id"] - 1 for a in annotations]), minlength=4)
    assert torch.equal(torch.bincount(objects, minlength=4), expected)
    assert 1 <= int((labels == BACKGROUND_LABEL).sum()) <= 5
    assert images.shape == (len(labels), 3, 32, 32) and images.dtype == torch.uint8


def test_official_state_dict_round_trips_through_the_strict_loader(tmp_path):
    torch.manual_seed(0)
    source = slimmable_resnet50(0.25)
    with torch.no_grad():  # non-trivial BN statistics, so a misplaced BN tensor shows in the outputs
        for module in source.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    state = official_state_dict(source)
    assert all(".bn.0." in key for key in state if ".bn." in key)  # index 0 is width 0.25
    path = tmp_path / "w.pt"
    torch.save({"model": state}, path)
    target = slimmable_resnet50(0.25)
    load_slimmable_checkpoint(target, path, 0.25)
    source.eval(), target.eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(source(x)["res5"], target(x)["res5"])
    # Only the trained width is stored: a wider model is refused by the loader, not half-filled.
    with pytest.raises(CheckpointError, match="too small|needs at least|does not fit"):
        load_slimmable_checkpoint(slimmable_resnet50(0.5), path, 0.5)


def test_pretraining_lowers_the_training_loss():
    settings = PretrainSettings(num_images=6, image_size=64, crop_size=32, iterations=60, batch_size=16, lr=0.02,
                                holdout=0.0)
    _model, report = pretrain_backbone(settings)
    assert report["num_train_crops"] > 16
    assert report["last_loss"] < 0.7 * report["first_loss"]


def test_bad_setting_is_one_clear_error(capsys):
    assert main(["pretrain", "--width", "0.3"]) == 2
    assert "width must be one of" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="crop_size must be >= 32"):
        PretrainSettings(crop_size=16).check()


def test_command_writes_a_cached_checkpoint_a_demo_config_trains_from(tmp_path, capsys):
    out = tmp_path / "pretrained.pt"
    assert main(["pretrain", *TINY, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "pretrained backbone:" in first and out.is_file()
    assert main(["pretrain", *TINY]) == 0
    assert "(cached)" in capsys.readouterr().out  # the second call reuses the file

    run = tmp_path / "run"
    overrides = [*tiny_training_overrides(run, max_iter=2), f"model.backbone.weights={out}"]
    assert main(["train", "msad/fcos_low_demo", "--no-eval", *overrides]) == 0
    assert (run / "model_final.pth").is_file()
    config = load_config("msad/fcos_low_demo", overrides)
    backbone = build_bottom_up(config["model"]["backbone"])
    stored = torch.load(out, weights_only=False)["model"]
    assert torch.equal(backbone.stem.conv.weight, stored["features.0.0.weight"])
    assert torch.equal(backbone.res5[2].norm3.running_var, stored["features.16.body.7.bn.0.running_var"])
