"""trainer.eval_period under two-process DDP on CPU (gloo): every rank infers, one COCO evaluation."""

from __future__ import annotations

import json
import math
import textwrap

import pytest

from msadkit.engine.train.metrics_logger import read_metrics
from msadkit.engine.train.validation import validation_rows
from tests.child_process import TWO_CPU_PROCESSES, run_script
from tests.conftest import tiny_training_overrides

SCRIPT = textwrap.dedent(
    """
    import sys

    import torch

    from msadkit.config import load_config
    from msadkit.engine.train.task import DetectionTask
    from msadkit.engine.train.trainer import train

    model_step = DetectionTask.validation_step


    def validation_step(self, batch, batch_idx):
        # Iteration 2: the ground truth itself (AP 100 only if every image counts exactly once);
        # later: the model's own detections.
        if self.global_step != 2:
            return model_step(self, batch, batch_idx)
        return [
            {"boxes": t["boxes"].float(), "scores": torch.ones(len(t["boxes"])), "labels": t["labels"]}
            for t in batch.targets
        ]


    DetectionTask.validation_step = validation_step
    train(load_config("fcos_demo", sys.argv[1:]))
    """
)


@pytest.mark.slow
def test_two_ranks_gather_every_image_once(tmp_path):
    run = tmp_path / "run"
    overrides = tiny_training_overrides(run, max_iter=4) + [
        *TWO_CPU_PROCESSES,
        "trainer.eval_period=2",
        # 5 images on 2 ranks: the distributed sampler gives the first image to both (with seed 2 it
        # has objects), and eval_batch_size 2 splits each rank's share over several batches.
        "data.synthetic.num_val=5",
        "data.synthetic.seed=2",
        "trainer.eval_batch_size=2",
    ]
    run_script(SCRIPT, tmp_path, *overrides)
    rows = validation_rows(read_metrics(run / "metrics.jsonl"))
    assert [row["iter"] for row in rows] == [2, 4]
    # A duplicated image would add false positives; an image of rank 1 left out would be missed.
    assert rows[0]["val/AP"] == 100.0
    # The last validation is the final model on all images, evaluated in one process afterwards.
    final = json.loads((run / "eval.json").read_text())
    for key, value in final.items():
        got = rows[1][f"val/{key}"]
        assert (math.isnan(got) and math.isnan(value)) or got == pytest.approx(value, abs=1e-9), key
    assert (run / "model_best.pth").is_file()
