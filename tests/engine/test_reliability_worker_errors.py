"""A corrupt image met by a data-loader worker gives the single-process path's one line."""

from __future__ import annotations

import json
import pickle

import pytest

from msadkit.data.coco_dataset import SampleError
from tests.engine.test_bad_input import coco_args, coco_copy, dataset_root, run_cli  # noqa: F401 (fixtures)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_one_line_with_and_without_workers(coco_copy, tmp_path, tiny_overrides, capsys, workers):  # noqa: F811
    data = json.loads((coco_copy / "train.json").read_text())
    broken = coco_copy / "images" / "train" / data["images"][1]["file_name"]
    broken.write_bytes(b"this is not a png")
    run = tmp_path / "run"
    status, err = run_cli(coco_args(coco_copy, run, tiny_overrides, [f"data.num_workers={workers}"]), capsys)
    assert status == 2
    assert "Traceback" not in err and "worker process" not in err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"msadkit train: error: image file {broken} cannot be decoded: ")
    assert not (run / "model_final.pth").exists()


def test_sample_error_takes_its_message_back_from_a_worker_traceback():
    wrapped = (
        "Caught SampleError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 3, in f\n    raise SampleError(m)\n'
        "msadkit.data.coco_dataset.SampleError: image file a.png cannot be decoded: OSError: broken\n"
    )
    assert str(SampleError(wrapped)) == "image file a.png cannot be decoded: OSError: broken"
    # Any other message, and the exception's trip through pickle (to and from a worker), keep it as is.
    assert str(SampleError("Caught a cold")) == "Caught a cold"
    assert str(pickle.loads(pickle.dumps(SampleError("image file b.png is 3x4")))) == "image file b.png is 3x4"
