"""MSAD student distillation: teacher loading, student init, the feature term and resume."""

import pytest
import torch

from msadkit.config import load_config
from msadkit.distill.distiller import Distiller
from msadkit.distill.msad import MSADFeatureLoss
from msadkit.distill.registry import TERMS
from msadkit.engine.train.trainer import build_training_model, train
from msadkit.errors import CheckpointError, ConfigError
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import load_checkpoint_file, save_atomic
from tests.tiny_runs import write_teacher_run

TINY = ["model.fpn.out_channels=32", "model.fcos.num_convs=1"]


def student_config(teacher, *overrides):
    return load_config("msad/msad_student_demo", [*TINY, f"distill.teacher={teacher}", *overrides])


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A teacher run folder (config.yaml + model_final.pth) with non-trivial weights."""
    run = tmp_path_factory.mktemp("teacher")
    # BN running statistics away from (0, 1), so that a teacher in train mode would show.
    write_teacher_run(run, "msad/msad_teacher_demo", TINY, spread_batchnorm_statistics=True)
    return run


def batch(seed=0):
    torch.manual_seed(seed)
    images = torch.randn(2, 3, 256, 256)
    targets = [
        {"boxes": torch.tensor([[12.0, 30.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[50.0, 40.0, 220.0, 200.0]]), "labels": torch.tensor([2])},
    ]
    return images, targets


def test_build_distiller_loads_the_teacher_and_initialises_the_student(teacher_run):
    model = build_training_model(student_config(teacher_run))
    assert isinstance(model, Distiller)
    saved = load_checkpoint_file(teacher_run / "model_final.pth")["model"]
    # The teacher holds exactly the saved weights.
    for name, value in model.teacher.state_dict().items():
        assert torch.equal(value, saved[name]), name
    # Every student tensor is the teacher's tensor of the same name in its shared detector.
    student_state = model.student.state_dict()
    for name, value in student_state.items():
        assert torch.equal(value, saved[f"detector.{name}"]), name
    # The low-res student has p2..p6: the teacher's p7 conv and the fusion gate are not copied.
    assert not any(name.startswith("backbone.fpn.p7") for name in student_state)
    assert model.student.input_downsample == 2
    # A copy, not shared storage: training the student cannot move the teacher.
    teacher_storage = {p.data_ptr() for p in model.teacher.parameters()}
    assert not teacher_storage & {p.data_ptr() for p in model.student.parameters()}


def test_without_init_the_student_keeps_its_own_weights(teacher_run):
    model = build_training_model(student_config(teacher_run, "distill.init_student_from_teacher=false"))
    saved = load_checkpoint_file(teacher_run / "model_final.pth")["model"]
    assert not torch.equal(model.student.head.cls_tower[0].weight, saved["detector.head.cls_tower.0.weight"])


def test_teacher_is_off_the_module_tree(teacher_run):
    model = build_training_model(student_config(teacher_run))
    teacher_params = {id(p) for p in model.teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    assert all(key.startswith(("student.", "distill_losses.")) for key in model.state_dict())
    assert set(model.export_state_dict()) == set(model.student.state_dict())


def test_teacher_stays_in_eval_mode_and_gets_no_gradient(teacher_run):
    model = build_training_model(student_config(teacher_run))
    bn_stats = {k: v.clone() for k, v in model.teacher.state_dict().items() if "running" in k}
    assert bn_stats
    model.train()
    assert not any(module.training for module in model.teacher.modules())
    model.iteration = 100
    images, targets = batch()
    losses = model(images, [(256, 256)] * 2, targets)
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())
    for key, value in model.teacher.state_dict().items():
        if key in bn_stats:
            assert torch.equal(value, bn_stats[key]), key
    # Eval mode of the distiller is the student's inference.
    model.eval()
    with torch.no_grad():
        detections = model(images, [(256, 256)] * 2)
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}


def test_kd_loss_is_zero_at_iteration_zero_and_matches_a_hand_computation(teacher_run):
    model = build_training_model(
        student_config(
            teacher_run,
            "distill.init_student_from_teacher=false",
            "distill.losses=[{type: msad_feature, weight: 2.0, ramp_iters: 40}]",
        )
    )
    term = model.distill_losses[0]
    assert isinstance(term, MSADFeatureLoss) and term.adapters is None
    model.train()
    images, targets = batch(1)
    model.iteration = 0
    assert model(images, None, targets)["loss_msad_feature"].item() == 0.0

    model.iteration = 10
    kd = model(images, None, targets)["loss_msad_feature"]
    with torch.no_grad():
        small = images[:, :, ::2, ::2]
        student = model.student.backbone(small)
        student_levels = [student[f"p{k}"] for k in range(2, 7)]
        teacher = model.teacher
        t_high = teacher.detector.backbone(images)
        t_low = teacher.detector.backbone(small)
        expected = 0.0
        for k in range(2, 7):
            high, low = t_high[f"p{k + 1}"], t_low[f"p{k}"]
            weights = teacher.fusion.fusion_weights(high, low)
            fused = weights[:, 0, None, None, None] * high + weights[:, 1, None, None, None] * low
            # alpha * T^2 * mean|s/T - t/T| with alpha 0.2, T 3 is 0.6 * mean|s - t|.
            expected += 0.6 * (student_levels[k - 2] - fused).abs().mean()
        expected = 2.0 * (10 / 40) * expected
    torch.testing.assert_close(kd.detach(), expected, rtol=1e-4, atol=1e-6)
    assert kd.requires_grad

    model.iteration = 400
    full = model(images, None, targets)["loss_msad_feature"]
    torch.testing.assert_close(full.detach(), expected * 4, rtol=1e-4, atol=1e-6)


def test_adapters_bridge_a_narrower_student(teacher_run):
    config = student_config(teacher_run, "distill.init_student_from_teacher=false", "model.fpn.out_channels=16")
    model = build_training_model(config)
    term = model.distill_losses[0]
    assert term.adapters is not None and len(term.adapters) == 5
    assert term.adapters[0].in_channels == 16 and term.adapters[0].out_channels == 32
    model.train()
    model.iteration = 50
    images, targets = batch(2)
    losses = model(images, None, targets)
    losses["loss_msad_feature"].backward()
    assert term.adapters[0].weight.grad.abs().sum() > 0
    # Adapters train with the student but are not part of the exported detector.
    assert any(key.startswith("distill_losses.0.adapters") for key in model.state_dict())
    assert not any("adapters" in key for key in model.export_state_dict())


def test_init_from_a_teacher_of_another_width_is_a_config_error(teacher_run):
    with pytest.raises(ConfigError, match="equal widths"):
        build_training_model(student_config(teacher_run, "model.fpn.out_channels=16"))
    with pytest.raises(ConfigError, match="equal widths"):
        build_training_model(student_config(teacher_run, "model.backbone.width=0.5"))


def test_init_from_a_teacher_with_another_backbone_is_a_config_error(teacher_run):
    # A torchvision R-50's tensors are all in an R-101 with the same shapes: without this check the
    # student would start from a cut-down teacher backbone.
    with pytest.raises(ConfigError, match="the student's is resnet50 and the teacher's slimmable_resnet50"):
        build_training_model(student_config(teacher_run, "model.backbone.name=resnet50"))


def test_init_lists_student_tensors_the_teacher_lacks(teacher_run):
    with pytest.raises(ConfigError, match=r"no weights for these student tensors.*head\.cls_subnet"):
        build_training_model(student_config(teacher_run, "model.arch=retinanet", "model.retinanet.num_convs=1"))


def test_missing_teacher_folder_or_files_are_checkpoint_errors(tmp_path, teacher_run):
    missing = tmp_path / "no_such_run"
    with pytest.raises(CheckpointError, match="no_such_run"):
        build_training_model(student_config(missing))
    half = tmp_path / "half_run"
    half.mkdir()
    (half / "config.yaml").write_text((teacher_run / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="model_final.pth"):
        build_training_model(student_config(half))
    bare = tmp_path / "bare.pth"
    save_atomic({"model": load_checkpoint_file(teacher_run / "model_final.pth")["model"]}, bare)
    with pytest.raises(CheckpointError, match="embeds no 'config'"):
        build_training_model(student_config(bare))


def test_a_checkpoint_file_with_its_config_is_a_valid_teacher(teacher_run):
    model = build_training_model(student_config(teacher_run / "model_final.pth"))
    assert type(model.teacher).__name__ == "MSADTeacher"


def test_teacher_loading_is_strict(tmp_path, teacher_run):
    data = load_checkpoint_file(teacher_run / "model_final.pth")
    state = dict(data["model"])
    del state["fusion.squeeze.weight"]
    state["detector.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    save_atomic({"model": state, "config": data["config"]}, bad)
    with pytest.raises(CheckpointError) as info:
        build_training_model(student_config(bad))
    message = str(info.value)
    assert "missing keys: fusion.squeeze.weight" in message
    assert "unexpected keys: detector.extra.weight" in message
    assert str(bad) in message

    state = dict(data["model"])
    state["fusion.score.weight"] = torch.zeros(5, 3)
    save_atomic({"model": state, "config": data["config"]}, bad)
    with pytest.raises(CheckpointError, match="shape mismatch: fusion.score.weight"):
        build_training_model(student_config(bad))


def test_loss_config_errors(teacher_run):
    assert "msad_feature" in TERMS
    with pytest.raises(ConfigError, match=r"unknown distillation loss type 'msad'.*msad_feature"):
        build_training_model(student_config(teacher_run, "distill.losses=[{type: msad}]"))
    with pytest.raises(ConfigError, match=r"'msad_feature': unknown option\(s\) ramp \(known: .*ramp_iters"):
        build_training_model(student_config(teacher_run, "distill.losses=[{type: msad_feature, ramp: 3}]"))
    with pytest.raises(ConfigError, match="loss_type"):
        build_training_model(student_config(teacher_run, "distill.losses=[{type: msad_feature, loss_type: l3}]"))
    with pytest.raises(ConfigError, match="non-empty"):
        build_training_model(student_config(teacher_run, "distill.losses=[]"))
    with pytest.raises(ConfigError, match="model.resolution=low"):
        build_training_model(student_config(teacher_run, "model.resolution=high", "distill.init_student_from_teacher=false"))
    with pytest.raises(ConfigError, match="data.size_divisibility=256"):
        build_training_model(student_config(teacher_run, "data.size_divisibility=32"))


def test_inference_build_of_a_student_config_needs_no_teacher(tmp_path):
    model = build_model(student_config(tmp_path / "absent"))
    assert not isinstance(model, Distiller) and model.input_downsample == 2


def test_resume_keeps_the_student_instead_of_reinitialising_it(tmp_path, teacher_run, tiny_overrides):
    run = tmp_path / "student"
    # A tiny learning rate: two more steps barely move the weights, so any jump back to the
    # teacher's values would show.
    overrides = [
        *tiny_overrides(run, max_iter=2),
        "model.resolution=low",
        "solver.base_lr=0.000001",
        # The perturbation below makes the loss jump on resume, which the divergence check would stop.
        "trainer.divergence.enabled=false",
    ]
    config = student_config(teacher_run, *overrides)
    train(config, evaluate=False)
    checkpoint_path = run / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint_file(checkpoint_path)
    key = "model.student.head.cls_logits.weight"
    teacher_value = load_checkpoint_file(teacher_run / "model_final.pth")["model"]["detector.head.cls_logits.weight"]
    assert torch.allclose(checkpoint["state_dict"][key], teacher_value, atol=1e-4)  # initialised from the teacher
    assert not any(k.startswith("model._teacher") or k.startswith("model.teacher") for k in checkpoint["state_dict"])
    perturbed = checkpoint["state_dict"][key] + 0.5
    checkpoint["state_dict"][key] = perturbed
    save_atomic(checkpoint, checkpoint_path)

    train(student_config(teacher_run, *overrides, "solver.max_iter=4"), resume=True, evaluate=False)
    resumed = load_checkpoint_file(checkpoint_path)
    assert resumed["global_step"] == 4
    final = load_checkpoint_file(run / "model_final.pth")["model"]
    assert set(final) == set(build_model(config).state_dict())
    assert torch.allclose(final["head.cls_logits.weight"], perturbed, atol=1e-3)
    assert (final["head.cls_logits.weight"] - teacher_value).abs().min() > 0.4
