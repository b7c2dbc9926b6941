"""detectron2 integration: registration, input mapping, checkpoint conversion and equivalence.

Needs a detectron2 installed from its repository; skipped where it is not installed (CI).
"""

import pytest

pytest.importorskip("detectron2")


import lightning as L  # noqa: E402
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import build_detection_test_loader, build_detection_train_loader  # noqa: E402
from detectron2.engine import SimpleTrainer, default_argument_parser  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY  # noqa: E402
from detectron2.modeling import build_model as build_d2_model  # noqa: E402
from detectron2.solver import build_optimizer as build_d2_optimizer  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from msadkit.config import load_config  # noqa: E402
from msadkit.data import collate_detection, generate_synthetic_dataset  # noqa: E402
from msadkit.data.build import build_dataset, build_loader  # noqa: E402
from msadkit.distill.distiller import Distiller  # noqa: E402
from msadkit.engine.evaluation.run_evaluation import evaluate_run  # noqa: E402
from msadkit.engine.train.metrics_logger import read_metrics  # noqa: E402
from msadkit.engine.train.task import DetectionTask  # noqa: E402
from msadkit.engine.train.trainer import build_training_model, train  # noqa: E402
from msadkit.errors import CheckpointError, ConfigError, InputError  # noqa: E402
from msadkit.integrations.detectron2 import (  # noqa: E402
    MsadkitDetector,
    MsadkitFPNBackbone,
    add_msadkit_config,
    detectron2_to_msadkit,
    msadkit_to_detectron2,
    register_msadkit_datasets,
)
from msadkit.integrations.detectron2.checkpoint_convert import (  # noqa: E402
    convert_detectron2_to_msadkit,
    convert_msadkit_to_detectron2,
    export_msadkit_run,
)
from msadkit.integrations.detectron2.checkpoint_convert import main as convert_main  # noqa: E402
from msadkit.integrations.detectron2.checkpointer import StrictDetectionCheckpointer  # noqa: E402
from msadkit.integrations.detectron2.config import (  # noqa: E402
    list_packaged_detectron2_configs,
    msadkit_config_from_cfg,
    resolve_detectron2_config,
)
from msadkit.integrations.detectron2.train_net import Trainer, check_num_classes  # noqa: E402
from msadkit.integrations.detectron2.train_net import main as train_net_main  # noqa: E402
from msadkit.modeling.backbones.fpn import BackboneWithFPN  # noqa: E402
from msadkit.modeling.detectors.msad_teacher import MSADTeacher  # noqa: E402
from msadkit.modeling.image_batch import (
    pixel_normalizer,  # noqa: E402
    to_model_input,  # noqa: E402
)
from msadkit.modeling.loading import load_model_weights  # noqa: E402
from msadkit.modeling.registry import build_model  # noqa: E402
from msadkit.utils.checkpoint import load_checkpoint_file, save_atomic  # noqa: E402

# DetectionTask.training_step logs through Lightning, which warns that no Trainer is attached.
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

IMAGE_SIZE = 64
# One training image (with five objects) as the whole batch: both engines see the same batch at every
# iteration whatever their samplers do. (With two images the samplers order them differently, and
# the rounding differences that makes grow over a few steps on these tiny BN statistics.)
NUM_TRAIN = 1
BATCH = NUM_TRAIN
DATA_SEED = 4


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, num_train=NUM_TRAIN, num_val=2, image_size=IMAGE_SIZE, seed=DATA_SEED)
    return root


def tiny(root, output_dir, *extra):
    """msadkit overrides: 64 px synthetic images, width 0.25, FPN 32, one head conv, no flip."""
    return [
        f"output_dir={output_dir}",
        "model.fpn.out_channels=64",  # GN then has 2 channels per group, even on a 1x1 P7 (batch 1)
        "model.fcos.num_convs=1",
        "model.retinanet.num_convs=1",
        # Every location scores above threshold, so detections are never vacuously empty.
        "model.fcos.score_thresh=0.0",
        "model.retinanet.score_thresh=0.0",
        f"data.synthetic.root={root}",
        f"data.synthetic.num_train={NUM_TRAIN}",
        "data.synthetic.num_val=2",
        f"data.synthetic.image_size={IMAGE_SIZE}",
        f"data.synthetic.seed={DATA_SEED}",
        f"data.train_short_sides=[{IMAGE_SIZE}]",
        f"data.train_max_size={IMAGE_SIZE}",
        f"data.test_short_side={IMAGE_SIZE}",
        f"data.test_max_size={IMAGE_SIZE}",
        "data.flip_prob=0.0",
        "data.num_workers=0",
        f"solver.batch_size={BATCH}",
        "solver.base_lr=0.01",
        "solver.max_iter=3",
        "solver.warmup_iters=1",
        "solver.steps=[1000]",
        "solver.clip_grad_norm=0.0",
        "trainer.accelerator=cpu",
        "trainer.checkpoint_period=1000",
        "trainer.log_period=1",
        "trainer.eval_batch_size=2",
        "trainer.progress_bar=false",
        "trainer.seed=0",
        *extra,
    ]


def d2_cfg(name, overrides, output_dir):
    """A detectron2 config that mirrors the msadkit one: same images, no resize, no flip, same solver."""
    cfg = add_msadkit_config(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = "MsadkitDetector"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MSADKIT.CONFIG = name
    cfg.MSADKIT.OVERRIDES = list(overrides)
    cfg.DATASETS.TRAIN = ("msadkit_train",)
    cfg.DATASETS.TEST = ("msadkit_val",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = (IMAGE_SIZE,)
    cfg.INPUT.MAX_SIZE_TRAIN = IMAGE_SIZE
    cfg.INPUT.MIN_SIZE_TEST = IMAGE_SIZE
    cfg.INPUT.MAX_SIZE_TEST = IMAGE_SIZE
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.SOLVER.IMS_PER_BATCH = BATCH
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.STEPS = (1000,)
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.WARMUP_FACTOR = 0.001
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = 0
    register_msadkit_datasets(msadkit_config_from_cfg(cfg))
    return cfg


def msadkit_batch(config, image_ids, split="train"):
    """msadkit's own pipeline (test transforms: no flip, no resize at 64 px) for these images, in this order."""
    dataset = build_dataset(config, split, train=False)
    index_of = {dataset[i][1]["image_id"]: i for i in range(len(dataset))}
    samples = [dataset[index_of[image_id]] for image_id in image_ids]
    raw = collate_detection(samples, size_divisibility=config["data"]["size_divisibility"])
    return to_model_input(raw, pixel_normalizer(config), "cpu")  # what msadkit's models are given


def record(loader):
    """Iterate ``loader``, remembering every batch it yields."""
    seen = []

    def generator():
        for batch in loader:
            seen.append(batch)
            yield batch

    return generator(), seen


# ----------------------------------------------------------------------------------- registration
def test_registries_and_packaged_configs():
    assert META_ARCH_REGISTRY.get("MsadkitDetector") is MsadkitDetector
    assert BACKBONE_REGISTRY.get("build_msadkit_slimmable_fpn_backbone") is not None
    assert {"MSAD-Teacher-W025", "MSAD-Student-W025"} <= set(list_packaged_detectron2_configs())
    for name, arch, resolution, batch, lr in (
        ("MSAD-Teacher-W025", "msad_teacher", "high", 16, 0.01),
        ("MSAD-Student-W025", "fcos", "low", 32, 0.02),
    ):
        cfg = add_msadkit_config(get_cfg())
        cfg.merge_from_file(str(resolve_detectron2_config(name)))
        config = msadkit_config_from_cfg(cfg)
        msadkit_name = "msad/msad_teacher_w025" if arch == "msad_teacher" else "msad/msad_student_w025"
        reference = load_config(msadkit_name)
        # The model side is the msadkit config itself; the solver side mirrors its values.
        assert config["model"] == reference["model"]
        assert config["model"]["backbone"]["width"] == 0.25 and config["model"]["resolution"] == resolution
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (batch, lr)
        assert cfg.SOLVER.IMS_PER_BATCH == reference["solver"]["batch_size"]
        assert cfg.SOLVER.BASE_LR == reference["solver"]["base_lr"]
        assert cfg.SOLVER.MAX_ITER == reference["solver"]["max_iter"]
        assert list(cfg.SOLVER.STEPS) == reference["solver"]["steps"]
        assert cfg.SOLVER.WARMUP_ITERS == reference["solver"]["warmup_iters"]
        assert list(cfg.INPUT.MIN_SIZE_TRAIN) == reference["data"]["train_short_sides"]
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    student_cfg = add_msadkit_config(get_cfg())
    student_cfg.merge_from_file(str(resolve_detectron2_config("MSAD-Student-W025")))
    assert msadkit_config_from_cfg(student_cfg)["distill"]["teacher"].endswith("msad_teacher_w025/msadkit")


def test_config_errors_name_the_key(tmp_path):
    cfg = add_msadkit_config(get_cfg())
    with pytest.raises(ConfigError, match="MSADKIT.CONFIG is empty"):
        msadkit_config_from_cfg(cfg)
    with pytest.raises(ConfigError, match="no MSADKIT section"):
        msadkit_config_from_cfg(get_cfg())
    cfg.MSADKIT.CONFIG = "fcos_demo"
    cfg.MSADKIT.OVERRIDES = ["model.fpn.no_such_key=1"]
    with pytest.raises(ConfigError, match="model.fpn.no_such_key"):
        msadkit_config_from_cfg(cfg)
    with pytest.raises(ConfigError, match="not found"):
        resolve_detectron2_config(tmp_path / "missing.yaml")
    # detectron2's built-in COCO lists 80 classes; a model for 4 is refused before training.
    cfg.DATASETS.TRAIN = ("coco_2017_train",)
    check_num_classes(cfg, 80)
    with pytest.raises(ConfigError, match="coco_2017_train has 80 classes .* model.num_classes=4"):
        check_num_classes(cfg, 4)


def test_wrapper_builds_each_kind_of_model(dataset_root, tmp_path):
    teacher = build_d2_model(d2_cfg("msad/msad_teacher_demo", tiny(dataset_root, tmp_path), tmp_path))
    assert isinstance(teacher, MsadkitDetector) and isinstance(teacher.model, MSADTeacher)
    assert teacher.size_divisibility == 256
    retinanet = build_d2_model(d2_cfg("retinanet_demo", tiny(dataset_root, tmp_path), tmp_path))
    assert type(retinanet.model).__name__ == "RetinaNet" and retinanet.distiller is None
    # Only the msadkit model's tensors, under "model."; normalisation constants are not saved.
    assert set(retinanet.state_dict()) == {f"model.{k}" for k in retinanet.model.state_dict()}


# ----------------------------------------------------------------------------------- input mapping
def test_inputs_map_to_a_normalised_padded_rgb_batch(dataset_root, tmp_path):
    cfg = d2_cfg("fcos_demo", tiny(dataset_root, tmp_path), tmp_path)
    cfg.INPUT.FORMAT = "BGR"
    model = build_d2_model(cfg)
    rgb = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8)
    rgb2 = torch.randint(0, 256, (3, 64, 33), dtype=torch.uint8)
    inputs = [{"image": rgb.flip(0)}, {"image": rgb2.flip(0)}]
    images, sizes = model.preprocess_images(inputs)
    assert sizes == [(40, 70), (64, 33)]
    assert images.shape == (2, 3, 64, 96)  # max size rounded up to 32
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(images[0, :, :40, :70], (rgb.float() - mean) / std)
    torch.testing.assert_close(images[1, :, :64, :33], (rgb2.float() - mean) / std)
    assert images[0, :, 40:, :].abs().sum() == 0 and images[0, :, :, 70:].abs().sum() == 0

    instances = Instances((40, 70))
    instances.gt_boxes = Boxes(torch.tensor([[1.0, 2.0, 30.0, 20.5]], dtype=torch.float64))
    instances.gt_classes = torch.tensor([3], dtype=torch.int32)
    targets = model.targets([{"image": rgb, "instances": instances}])
    assert targets[0]["boxes"].dtype == torch.float32 and targets[0]["labels"].dtype == torch.int64
    assert targets[0]["boxes"].tolist() == [[1.0, 2.0, 30.0, 20.5]] and targets[0]["labels"].tolist() == [3]

    with pytest.raises(InputError, match="instances"):
        model.train()([{"image": rgb}])
    with pytest.raises(InputError, match=r"input 0: 'image' must be a \(3, H, W\)"):
        model([{"image": torch.zeros(4, 8, 8, dtype=torch.uint8)}])


def test_eval_output_is_rescaled_to_the_original_size(dataset_root, tmp_path):
    model = build_d2_model(d2_cfg("fcos_demo", tiny(dataset_root, tmp_path), tmp_path)).eval()
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        (same,) = model([{"image": image}])
        (doubled,) = model([{"image": image, "height": 128, "width": 96}])
        direct = model.model(model.preprocess_images([{"image": image}])[0], [(64, 64)])[0]
    assert len(same["instances"]) > 0
    assert same["instances"].image_size == (64, 64) and doubled["instances"].image_size == (128, 96)
    torch.testing.assert_close(same["instances"].pred_boxes.tensor, direct["boxes"])
    torch.testing.assert_close(same["instances"].scores, direct["scores"])
    assert torch.equal(same["instances"].pred_classes, direct["labels"])
    scale = torch.tensor([96 / 64, 128 / 64, 96 / 64, 128 / 64])
    torch.testing.assert_close(doubled["instances"].pred_boxes.tensor, direct["boxes"] * scale)


# ----------------------------------------------------------------------------------- backbone
def test_backbone_serves_detectron2_retinanet(dataset_root, tmp_path):
    cfg = d2_cfg("fcos_demo", tiny(dataset_root, tmp_path), tmp_path)
    cfg.MODEL.META_ARCHITECTURE = "RetinaNet"
    cfg.MODEL.BACKBONE.NAME = "build_msadkit_slimmable_fpn_backbone"
    cfg.MODEL.RETINANET.NUM_CLASSES = 4
    with pytest.raises(ConfigError, match="MODEL.PIXEL_MEAN"):
        build_d2_model(cfg)
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]
    torch.manual_seed(0)
    model = build_d2_model(cfg)
    backbone = model.backbone
    assert isinstance(backbone, MsadkitFPNBackbone)
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        "p3": (64, 8), "p4": (64, 16), "p5": (64, 32), "p6": (64, 64), "p7": (64, 128)
    }
    # Same parameter names as msadkit's BackboneWithFPN: msadkit weights load directly.
    reference = build_model(msadkit_config_from_cfg(cfg)).backbone
    assert isinstance(reference, BackboneWithFPN)
    assert set(backbone.state_dict()) == set(reference.state_dict())
    reference.load_state_dict(backbone.state_dict())
    x = torch.randn(1, 3, 64, 64)
    backbone.eval(), reference.eval()
    out, ref = backbone(x), reference(x)
    for name in ("p3", "p4", "p5", "p6", "p7"):
        torch.testing.assert_close(out[name], ref[name])
    # One training step of detectron2's RetinaNet on the msadkit backbone.
    loader = build_detection_train_loader(cfg)
    trainer = SimpleTrainer(model.train(), loader, build_d2_optimizer(cfg, model))
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.run_step()
    assert torch.isfinite(torch.tensor(storage.history("total_loss").latest()))


# ----------------------------------------------------------------------------------- conversion
def test_checkpoint_conversion_round_trip_is_exact_and_strict(dataset_root, tmp_path):
    config = load_config("retinanet_demo", tiny(dataset_root, tmp_path))
    torch.manual_seed(1)
    model = build_model(config)
    state = model.state_dict()
    converted = msadkit_to_detectron2(state)
    assert set(converted) == {"model." + k for k in state}
    back = detectron2_to_msadkit({**converted, "distill_losses.0.adapter.weight": torch.zeros(1)})
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(CheckpointError, match="backbone.bottom_up"):
        detectron2_to_msadkit({"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)})

    source = tmp_path / "model_final.pth"
    save_atomic({"model": state, "config": config}, source)
    d2_file = convert_msadkit_to_detectron2(source, tmp_path / "d2.pth")
    msadkit_file = convert_detectron2_to_msadkit(d2_file, tmp_path / "again.pth")
    again = load_checkpoint_file(msadkit_file)
    assert again["config"] == config
    assert all(torch.equal(again["model"][k], state[k]) for k in state) and set(again["model"]) == set(state)

    # detectron2's checkpointer loads the converted file into the wrapper, key for key.
    wrapper = build_d2_model(d2_cfg("retinanet_demo", tiny(dataset_root, tmp_path), tmp_path))
    StrictDetectionCheckpointer(wrapper).load(str(d2_file))
    assert all(torch.equal(wrapper.model.state_dict()[k], state[k]) for k in state)

    # Strict: a missing tensor is an error naming it, in both directions and when loading.
    broken = dict(state)
    del broken["head.cls_score.weight"]
    save_atomic({"model": broken, "config": config}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="missing keys: head.cls_score.weight"):
        convert_msadkit_to_detectron2(tmp_path / "broken.pth", tmp_path / "x.pth")
    save_atomic({"model": msadkit_to_detectron2(broken)}, tmp_path / "broken_d2.pth")
    with pytest.raises(CheckpointError, match="missing keys: model.head.cls_score.weight"):
        StrictDetectionCheckpointer(wrapper).load(str(tmp_path / "broken_d2.pth"))
    with pytest.raises(CheckpointError, match="does not carry its msadkit config"):
        convert_detectron2_to_msadkit(tmp_path / "broken_d2.pth", tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="missing keys: head.cls_score.weight"):
        convert_detectron2_to_msadkit(tmp_path / "broken_d2.pth", tmp_path / "x.pth", config=config)
    # The command line reports user errors with status 2 and a message.
    assert convert_main(["to-detectron2", str(tmp_path / "broken.pth"), str(tmp_path / "x.pth")]) == 2
    assert convert_main(["to-detectron2", str(source), str(tmp_path / "cli.pth")]) == 0
    assert set(load_checkpoint_file(tmp_path / "cli.pth")["model"]) == set(converted)


# ----------------------------------------------------------------------------------- equivalence
def predictions_msadkit(model, config):
    """msadkit detections per image id on the val split, in original pixels."""
    dataset = build_dataset(config, "val")
    model.eval()
    found = {}
    with torch.no_grad():
        for batch in build_loader(config, dataset, train=False):
            batch = to_model_input(batch, pixel_normalizer(config), "cpu")
            for target, det in zip(batch.targets, model(batch.images, batch.image_sizes)):
                found[target["image_id"]] = {k: v / target["scale"] if k == "boxes" else v for k, v in det.items()}
    return found


def predictions_detectron2(wrapper, cfg):
    """Detections of the wrapper per image id through detectron2's test loader."""
    wrapper.eval()
    found = {}
    with torch.no_grad():
        for inputs in build_detection_test_loader(cfg, cfg.DATASETS.TEST[0]):
            for item, out in zip(inputs, wrapper(inputs)):
                inst = out["instances"]
                found[item["image_id"]] = {"boxes": inst.pred_boxes.tensor, "scores": inst.scores, "labels": inst.pred_classes}
    return found


def assert_same_detections(a, b):
    assert a.keys() == b.keys() and len(a) == 2
    for image_id in a:
        assert len(a[image_id]["scores"]) > 0
        torch.testing.assert_close(a[image_id]["boxes"], b[image_id]["boxes"], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a[image_id]["scores"], b[image_id]["scores"], rtol=1e-5, atol=1e-6)
        assert torch.equal(a[image_id]["labels"], b[image_id]["labels"])


def test_detectron2_trainer_and_msadkit_engine_agree(dataset_root, tmp_path):
    """Same seed and weights: same loss at iteration 0, and same detections from the same checkpoint."""
    ms_dir, d2_dir = tmp_path / "msadkit", tmp_path / "detectron2"
    overrides = tiny(dataset_root, ms_dir)
    config = load_config("fcos_demo", overrides)

    # msadkit's engine: Lightning, 3 iterations, model_final.pth.
    train(config, evaluate=False)
    ms_loss0 = read_metrics(ms_dir / "metrics.jsonl")[0]
    assert ms_loss0["iter"] == 1  # logged after the first update: the loss of iteration 0

    # detectron2's trainer from the same seed: the weights it starts from are msadkit's from that seed.
    cfg = d2_cfg("fcos_demo", overrides, d2_dir)
    seed_all_rng(cfg.SEED)
    trainer = Trainer(cfg)
    L.seed_everything(0, verbose=False)
    initial = build_model(config).state_dict()
    assert all(torch.equal(initial[k], v) for k, v in trainer.model.model.state_dict().items())
    trainer.resume_or_load(resume=False)
    trainer.train()
    d2_loss0, iteration = trainer.storage.history("total_loss").values()[0]
    assert iteration == 0
    print(f"loss at iteration 0: msadkit {ms_loss0['loss']!r}, detectron2 {d2_loss0!r}")
    assert d2_loss0 == pytest.approx(ms_loss0["loss"], rel=1e-5)
    terms = [key for key in ms_loss0 if key.startswith("loss_")]
    assert len(terms) == 3
    for key in terms:
        assert trainer.storage.history(key).values()[0][0] == pytest.approx(ms_loss0[key], rel=1e-5)

    # Both trainings did the same three SGD steps on the same batch.
    ms_state = load_checkpoint_file(ms_dir / "model_final.pth")["model"]
    d2_state = trainer.model.model.state_dict()
    for key, value in ms_state.items():
        torch.testing.assert_close(d2_state[key], value, rtol=1e-4, atol=1e-5, msg=key)

    # msadkit checkpoint -> detectron2: the wrapper detects what the msadkit model detects.
    msadkit_model = build_model(config)
    load_model_weights(msadkit_model, ms_dir / "model_final.pth")
    converted = convert_msadkit_to_detectron2(ms_dir / "model_final.pth", tmp_path / "from_msadkit.pth")
    wrapper = MsadkitDetector(cfg, for_inference=True)
    StrictDetectionCheckpointer(wrapper).load(str(converted))
    assert_same_detections(predictions_msadkit(msadkit_model, config), predictions_detectron2(wrapper, cfg))

    # detectron2 checkpoint (DetectionCheckpointer's model_final.pth) -> msadkit: likewise.
    back = convert_detectron2_to_msadkit(d2_dir / "model_final.pth", tmp_path / "from_d2.pth", config=config)
    from_d2 = build_model(config)
    load_model_weights(from_d2, back)
    assert_same_detections(predictions_msadkit(from_d2, config), predictions_detectron2(trainer.model, cfg))
    # train_net's export: a msadkit run folder with the same weights, which msadkit evaluates.
    run = export_msadkit_run(trainer.model, tmp_path / "exported")
    exported = load_checkpoint_file(run / "model_final.pth")["model"]
    assert set(exported) == set(d2_state) and all(torch.equal(exported[k], d2_state[k]) for k in d2_state)
    assert "AP" in evaluate_run(run, write=False)

    # train_net's --eval-only path evaluates the converted checkpoint with COCOEvaluator.
    cfg_file = tmp_path / "d2.yaml"
    cfg_file.write_text(cfg.dump())
    args = default_argument_parser().parse_args(
        ["--config-file", str(cfg_file), "--eval-only", "MODEL.WEIGHTS", str(converted), "OUTPUT_DIR", str(tmp_path / "eval")]
    )
    results = train_net_main(args)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def one_step_losses(cfg, config, *, start_iter=0):
    """Losses of one step on the same batch: detectron2's SimpleTrainer vs msadkit.

    msadkit's side is the engine's ``DetectionTask.training_step`` at iteration 0; at a later
    iteration (for ramped distillation losses) it is the model's forward with that iteration set, as
    the engine sets it from Lightning's global step.

    Returns:
        ``(d2_total, msadkit_total, d2_losses, msadkit_losses)``.
    """
    seed_all_rng(0)
    wrapper = build_d2_model(cfg)
    torch.manual_seed(0)
    reference = build_training_model(config)  # a Distiller when distill.teacher is set, as the wrapper
    loader, seen = record(build_detection_train_loader(cfg))
    trainer = SimpleTrainer(wrapper.train(), loader, build_d2_optimizer(cfg, wrapper))
    with EventStorage(start_iter) as storage:
        trainer.iter = start_iter
        trainer.run_step()
    if wrapper.distiller is not None:
        assert wrapper.distiller.iteration == start_iter
    d2_losses = {k: v.latest() for k, v in storage.histories().items() if k not in ("total_loss", "data_time", "rank_data_time")}
    d2_total = storage.history("total_loss").latest()

    batch = msadkit_batch(config, [item["image_id"] for item in seen[0]])
    captured = []
    reference.register_forward_hook(lambda module, args, output: captured.append(output))
    reference.train()
    if start_iter == 0:
        ms_total = DetectionTask(reference, config).training_step(batch, 0).item()
    else:
        reference.iteration = start_iter
        ms_total = sum(reference(batch.images, batch.image_sizes, batch.targets).values()).item()
    ms_losses = {k: v.item() for k, v in captured[0].items()}
    print(f"{config['model']['arch']} loss at iteration {start_iter}: msadkit {ms_total!r}, detectron2 {d2_total!r}")
    return d2_total, ms_total, d2_losses, ms_losses


def test_msad_teacher_loss_matches(dataset_root, tmp_path):
    overrides = tiny(dataset_root, tmp_path)
    cfg = d2_cfg("msad/msad_teacher_demo", overrides, tmp_path)
    config = load_config("msad/msad_teacher_demo", overrides)
    d2_total, ms_total, d2_losses, ms_losses = one_step_losses(cfg, config)
    assert {key.split("_")[0] for key in d2_losses} == {"high", "low", "fused"}
    assert d2_total == pytest.approx(ms_total, rel=1e-5)
    assert d2_losses == pytest.approx(ms_losses, rel=1e-5)


@pytest.mark.parametrize(
    "teacher_base, student_base, losses, start_iter",
    [
        ("retinanet_demo", "retinanet_demo", "[{type: adl, weight: 1.0}]", 0),
        ("fcos_demo", "fcos_demo", "[{type: gid, weight: 1.0}]", 0),
        # The packaged MSAD student (initialised from the teacher), half-way up its 10-step ramp.
        ("msad/msad_teacher_demo", "msad/msad_student_demo", "[{type: msad_feature, weight: 1.0, ramp_iters: 10}]", 5),
    ],
)
def test_students_match(dataset_root, tmp_path, teacher_base, student_base, losses, start_iter):
    teacher_config = load_config(teacher_base, tiny(dataset_root, tmp_path / "teacher"))
    torch.manual_seed(7)
    teacher = build_model(teacher_config)
    save_atomic({"model": teacher.state_dict(), "config": teacher_config}, tmp_path / "teacher.pth")
    overrides = tiny(dataset_root, tmp_path / "student", f"distill.teacher={tmp_path / 'teacher.pth'}", f"distill.losses={losses}")
    config = load_config(student_base, overrides)
    cfg = d2_cfg(student_base, overrides, tmp_path / "student")
    wrapper = build_d2_model(cfg)
    assert isinstance(wrapper.distiller, Distiller)
    # The teacher stays off the module tree; the student is "model", the loss terms "distill_losses".
    assert {k.split(".")[0] for k in wrapper.state_dict()} <= {"model", "distill_losses"}
    assert not wrapper.train().distiller.teacher.training and wrapper.distiller.training
    assert not wrapper.eval().distiller.training
    d2_total, ms_total, d2_losses, ms_losses = one_step_losses(cfg, config, start_iter=start_iter)
    term = losses.split("type: ")[1].split(",")[0]
    distill_terms = [key for key in d2_losses if key.startswith(("loss_" + term, term))]
    assert distill_terms and all(d2_losses[key] > 0 for key in distill_terms), d2_losses
    assert d2_total == pytest.approx(ms_total, rel=1e-5)
    assert d2_losses == pytest.approx(ms_losses, rel=1e-5)
