"""`msadkit export`: the ONNX and TorchScript files give what `msadkit predict` gives, at any image size."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision  # noqa: F401  (registers the NMS operator a TorchScript file calls)

from msadkit.cli import main
from tests.engine.inference_runs import image_copies, make_run, read_rgb

SCORE_THRESHOLD = 0.3
# (h, w) for a test short side of 64 and long side up to 128: the first two are only padded, the
# others resized down, up, and down to the long-side limit.
SIZES = [(64, 64), (64, 100), (96, 80), (40, 56), (70, 200)]


def predicted(tmp_path, run, images, capsys) -> dict[str, list[dict]]:
    """`msadkit predict` detections per image file (batched: images that pad alike share a batch)."""
    out = tmp_path / "predict"
    args = ["predict", str(run), *map(str, images), "--out", str(out), "--device", "cpu"]
    assert main(args + ["--score-threshold", str(SCORE_THRESHOLD)]) == 0, capsys.readouterr().err
    by_file: dict[str, list[dict]] = {str(p): [] for p in images}
    for entry in json.loads((out / "detections.json").read_text()):
        by_file[entry["image_file"]].append(entry)
    return by_file


def assert_same_detections(exported, reference, *, margin=1e-3) -> int:
    """Every ``reference`` detection clearly above the threshold has an exported twin (same label, box
    within 1e-2 px, score within 1e-4) and the export has no other one clearly above it; returns
    how many were compared."""
    boxes, scores, labels = (torch.as_tensor(x) for x in exported)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    strong = [e for e in reference if e["score"] > SCORE_THRESHOLD + margin]
    for entry in strong:
        close = (
            (labels == entry["category_id"] - 1)
            & ((xywh - torch.tensor(entry["bbox"])).abs().amax(dim=1) <= 1e-2)
            & ((scores - entry["score"]).abs() <= 1e-4)
        )
        assert close.any(), f"no exported twin of {entry}"
    assert int((scores > SCORE_THRESHOLD + margin).sum()) == len(strong)
    return len(strong)


# The MSAD teacher pads to 256 and runs two pyramids: about 20 s, so only in the slow suite.
@pytest.mark.parametrize(
    "kind", ["fcos", "retinanet", "low_res_student", pytest.param("msad_teacher", marks=pytest.mark.slow)]
)
def test_exported_files_match_predict_at_several_sizes(tmp_path, kind, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    run, config = make_run(tmp_path / "run", kind)
    images = image_copies(config, tmp_path / "images", SIZES)
    reference = predicted(tmp_path, run, images, capsys)

    onnx_file, script_file = tmp_path / "deploy" / "model.onnx", tmp_path / "deploy" / "model.pt"
    assert main(["export", str(run), "--format", "onnx", "--out", str(onnx_file)]) == 0
    assert main(["export", str(run), "--format", "torchscript", "--out", str(script_file)]) == 0
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["model.onnx", "model.pt"]  # no temporaries

    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    script = torch.jit.load(str(script_file))
    compared = 0
    for path in images:
        image = read_rgb(path)
        with torch.no_grad():
            scripted = script(image)
        onnx_out = [torch.from_numpy(x) for x in session.run(None, {"image": image.numpy()})]
        assert onnx_out[0].dtype == torch.float32 and onnx_out[2].dtype == torch.int64
        compared += assert_same_detections(scripted, reference[str(path)])
        assert_same_detections(onnx_out, reference[str(path)])
    assert compared >= 10  # the comparison saw real detections


def test_export_of_an_unfinished_run_writes_nothing(tmp_path, capsys):
    run, _ = make_run(tmp_path / "run")
    (run / "model_final.pth").unlink()  # training stopped before the end: no final weights
    out = tmp_path / "deploy" / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model_final.pth" in err and "train that run to the end first" in err
    assert not out.exists() and not any(out.parent.iterdir())


def test_export_to_an_unwritable_path(tmp_path, capsys):
    run, _ = make_run(tmp_path / "run")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    status = main(["export", str(run), "--format", "torchscript", "--out", str(blocker / "model.pt")])
    err = capsys.readouterr().err
    assert status == 2 and str(blocker / "model.pt") in err and "cannot create folder" in err
    assert blocker.read_text() == "not a folder"


def test_a_failed_export_leaves_no_partial_file(tmp_path, monkeypatch):
    import msadkit.engine.inference.export as export

    run, _ = make_run(tmp_path / "run")
    out = tmp_path / "deploy" / "model.pt"
    out.parent.mkdir()
    out.write_bytes(b"previous export")

    def broken_save(module, handle):
        handle.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(export.torch.jit, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["export", str(run), "--format", "torchscript", "--out", str(out)])
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]


@pytest.mark.parametrize(
    "size, new_size",
    [((50, 90), (64, 115)), ((96, 80), (77, 64)), ((300, 200), (96, 64)), ((7, 9), (64, 82)), ((64, 64), (64, 64))],
)
def test_the_graph_resize_reproduces_torch_uint8_kernel_exactly(size, new_size):
    from torch.nn import functional as F

    from msadkit.engine.inference.deploy import resize_like_uint8

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (1, 3, *size), generator=generator, dtype=torch.uint8)
    expected = F.interpolate(pixels, size=new_size, mode="bilinear", align_corners=False, antialias=False)
    resized = resize_like_uint8(pixels.double(), torch.tensor(new_size))
    assert resized.shape == expected.shape
    assert torch.equal(resized, expected.double())
    # A plain float resize rounded afterwards is not the same (the reason for the fixed-point taps).
    if size != new_size:
        plain = F.interpolate(pixels.double(), size=new_size, mode="bilinear", align_corners=False).round()
        assert not torch.equal(plain, expected.double())


def test_traced_candidate_selection_and_clipping_follow_the_image():
    from msadkit.modeling.detectors.postprocess import clip_boxes, top_candidates

    def select(scores, boxes, height, width):
        kept, order = top_candidates(scores, 3)
        return kept, clip_boxes(boxes[order], (height, width))

    boxes = torch.tensor(
        [[-5.0, 2.0, 30.0, 70.0], [1.0, 1.0, 2.0, 2.0], [10.0, -1.0, 90.0, 20.0], [0.0, 0.0, 5.0, 5.0]]
    )
    scores = torch.tensor([0.2, 0.9, 0.5, 0.7])
    h, w = torch.tensor(40), torch.tensor(64)
    traced = torch.jit.trace(select, (scores, boxes, h, w), check_trace=False)
    kept, clipped = traced(scores, boxes, h, w)
    assert kept.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert clipped.tolist() == [[1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 5.0, 5.0], [10.0, 0.0, 64.0, 20.0]]
    # Fewer candidates than k and another image size: the trace keeps all and clips to the new size.
    kept, clipped = traced(scores[:2], boxes[:2], torch.tensor(50), torch.tensor(20))
    assert kept.tolist() == pytest.approx([0.9, 0.2])
    assert clipped.tolist() == [[1.0, 1.0, 2.0, 2.0], [0.0, 2.0, 20.0, 50.0]]
    # Eagerly the same selection.
    eager_kept, eager_clipped = select(scores, boxes, 40, 64)
    assert eager_kept.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert sorted(eager_clipped.tolist()) == sorted(
        [[1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 5.0, 5.0], [10.0, 0.0, 64.0, 20.0]]
    )


@pytest.mark.parametrize("order", ["clip_first", "nms_first"])
def test_a_trace_without_candidates_still_suppresses_later_ones(order):
    """An example image on which no candidate passes the score threshold must not freeze 'no
    detections' or 'keep all' into the exported graph: torchvision's batched_nms scripts its early
    return for no boxes, and the MSAD order's cap to detections_per_image is a sort while tracing."""
    from msadkit.modeling.detectors.postprocess import select_detections, select_detections_nms_first

    select = select_detections if order == "clip_first" else select_detections_nms_first

    def detect(boxes, scores, labels, height, width):
        out = select(boxes, scores, labels, (height, width), nms_thresh=0.5, detections_per_image=2)
        return out["boxes"], out["scores"], out["labels"]

    empty = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.tensor(50), torch.tensor(60))
    traced = torch.jit.trace(detect, empty, check_trace=False)
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    got = traced(boxes, scores, labels, torch.tensor(50), torch.tensor(60))
    expected = detect(boxes, scores, labels, 50, 60)
    # Box 1 is suppressed by box 0 (same class), box 2 survives (other class); two are kept.
    assert expected[1].tolist() == pytest.approx([0.9, 0.7])
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert [len(x) for x in traced(*empty)] == [0, 0, 0]


def test_onnx_export_without_the_onnx_package_names_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    run, _ = make_run(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    out = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 2
    assert "pip install msadkit[export]" in capsys.readouterr().err
    assert not out.exists()
