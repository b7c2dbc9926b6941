"""Every bad input gives one clear error naming the file or key, exit status 2, no run folder."""

import json
import shutil

import pytest
import torch

from msadkit.cli import main
from msadkit.data import generate_synthetic_dataset


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "synth", num_train=4, num_val=2, image_size=64).root


@pytest.fixture
def coco_copy(dataset_root, tmp_path):
    """A writable copy of the tiny dataset, used as a plain COCO dataset."""
    root = tmp_path / "coco"
    shutil.copytree(dataset_root, root)
    return root


def run_cli(args, capsys):
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.err


def coco_args(root, run, tiny_overrides, extra=()):
    overrides = [o for o in tiny_overrides(run) if not o.startswith("data.synthetic")]
    return [
        "train",
        "fcos_demo",
        *overrides,
        "data.dataset=coco",
        f"data.train_json={root / 'train.json'}",
        f"data.train_images={root / 'images' / 'train'}",
        f"data.val_json={root / 'val.json'}",
        f"data.val_images={root / 'images' / 'val'}",
        *extra,
    ]


def assert_clean_failure(status, err, *needles, run=None):
    assert status == 2
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("msadkit ") and ": error: " in message, err
    for needle in needles:
        assert str(needle) in message, (needle, err)
    if run is not None:
        assert not run.exists()


def test_missing_image_folder(coco_copy, tmp_path, tiny_overrides, capsys):
    shutil.rmtree(coco_copy / "images" / "train")
    run = tmp_path / "run"
    status, err = run_cli(coco_args(coco_copy, run, tiny_overrides), capsys)
    assert_clean_failure(status, err, coco_copy / "images" / "train", run=run)


def test_missing_json(coco_copy, tmp_path, tiny_overrides, capsys):
    (coco_copy / "train.json").unlink()
    run = tmp_path / "run"
    status, err = run_cli(coco_args(coco_copy, run, tiny_overrides), capsys)
    assert_clean_failure(status, err, coco_copy / "train.json", run=run)


def test_malformed_json(coco_copy, tmp_path, tiny_overrides, capsys):
    (coco_copy / "train.json").write_text('{"images": [}')
    run = tmp_path / "run"
    status, err = run_cli(coco_args(coco_copy, run, tiny_overrides), capsys)
    assert_clean_failure(status, err, coco_copy / "train.json", run=run)


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_annotation_pointing_at_missing_image(coco_copy, tmp_path, tiny_overrides, capsys):
    data = json.loads((coco_copy / "train.json").read_text())
    missing = coco_copy / "images" / "train" / data["images"][0]["file_name"]
    missing.unlink()
    run = tmp_path / "run"
    status, err = run_cli(coco_args(coco_copy, run, tiny_overrides), capsys)
    assert_clean_failure(status, err, missing, run=run)


def test_category_not_in_categories(coco_copy, tmp_path, tiny_overrides, capsys):
    def edit(data):
        data["annotations"][0]["category_id"] = 99

    _edit_json(coco_copy / "train.json", edit)
    run = tmp_path / "run"
    status, err = run_cli(coco_args(coco_copy, run, tiny_overrides), capsys)
    assert_clean_failure(status, err, "99", coco_copy / "train.json", run=run)


def test_corrupt_image_file(coco_copy, tmp_path, tiny_overrides, capsys):
    data = json.loads((coco_copy / "train.json").read_text())
    broken = coco_copy / "images" / "train" / data["images"][1]["file_name"]
    broken.write_bytes(b"this is not a png")
    run = tmp_path / "run"
    status, err = run_cli(coco_args(coco_copy, run, tiny_overrides), capsys)
    assert_clean_failure(status, err, broken)
    # The corrupt file is only found while training; no checkpoint or final weights were written.
    assert not (run / "model_final.pth").exists()
    assert not list(run.glob("checkpoints/*.ckpt"))


def test_unknown_config_key(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    status, err = run_cli(["train", "fcos_demo", *tiny_overrides(run), "solver.learning_rate=0.1"], capsys)
    assert_clean_failure(status, err, "solver.learning_rate", run=run)


def test_wrongly_typed_config_value(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    status, err = run_cli(["train", "fcos_demo", *tiny_overrides(run), "solver.max_iter=many"], capsys)
    assert_clean_failure(status, err, "solver.max_iter", run=run)


def test_missing_config_file(tmp_path, capsys):
    status, err = run_cli(["train", str(tmp_path / "nope.yaml")], capsys)
    assert_clean_failure(status, err, tmp_path / "nope.yaml")


def test_backbone_checkpoint_that_does_not_match(tmp_path, tiny_overrides, capsys):
    from tests.modeling.test_slimmable import make_official_state

    # The official multi-width layout with one tensor missing, one unknown and one too small for
    # the width-0.25 stem (16 output channels): each is named, and nothing else is.
    state = make_official_state(0)
    del state["module.features.1.body.0.weight"]
    state["module.features.99.body.0.weight"] = torch.zeros(4, 4, 1, 1)
    state["module.features.0.0.weight"] = torch.zeros(8, 3, 7, 7)
    bad = tmp_path / "weights.pt"
    torch.save({"model": state}, bad)
    run = tmp_path / "run"
    status, err = run_cli(["train", "fcos_demo", *tiny_overrides(run), f"model.backbone.weights={bad}"], capsys)
    assert_clean_failure(
        status,
        err,
        f"checkpoint {bad} does not fit the slimmable ResNet-50 at width 0.25: ",
        "missing keys: module.features.1.body.0.weight (for res2.0.conv1.weight);",
        "unexpected keys: module.features.99.body.0.weight;",
        "shape mismatch: module.features.0.0.weight (stored (8, 3, 7, 7), needs at least (16, 3, 7, 7))",
        run=run,
    )
    message = err.strip().splitlines()[-1]
    assert message.count("module.") == 3  # the three faulty keys, no others


def test_evaluate_with_weights_of_another_model(tmp_path, tiny_overrides, capsys):
    run = tmp_path / "run"
    assert main(["train", "fcos_demo", *tiny_overrides(run, max_iter=1), "--no-eval"]) == 0
    other = tmp_path / "other.pth"
    torch.save({"model": {"head.cls_logits.weight": torch.zeros(3, 3), "head.extra.weight": torch.zeros(1)}}, other)
    capsys.readouterr()
    status, err = run_cli(["evaluate", str(run), "--weights", str(other)], capsys)
    assert_clean_failure(status, err, other, "missing keys", "unexpected keys: head.extra.weight", "shape mismatch: head.cls_logits.weight")
    assert not (run / "eval.json").exists()
