"""Fake run folders of a comparison: what a finished run writes that the table reads (config.yaml,
eval.json, metrics.jsonl with validation rows, a bootstrap cache), with values chosen by the tests."""

from __future__ import annotations

import json

import yaml

# AP per seed 0, 1, 2 of each model; the baseline's are the reference of every difference.
AP = {
    "teacher": [30.0, 31.0, 32.0],
    "baseline": [20.0, 22.0, 21.0],
    "control": [24.0, 25.0, 23.0],
    "adl": [21.0, 23.5, 21.5],  # differences +1.0 +1.5 +0.5
    "gid": [19.0, 21.0, 20.5],  # differences -1.0 -1.0 -0.5
}
BASELINE_SE = [0.8, 1.0, 1.2]
# The run's own final validation (training-time split) lies this far above the reported evaluation
# on the larger split: a plateau mark computed across the two splits would come out wrong.
OWN_SPLIT_OFFSET = 3.0


def write_fake_run(run, ap, *, rising=False, validated=True, se=None):
    run_dir, result_dir = run.run_dir, run.result_dir
    result_dir.mkdir(parents=True)
    length = run.iterations
    (run_dir / "config.yaml").write_text(yaml.safe_dump(run.job.config))  # the config the run resolved
    metrics = {"AP": ap, "AP50": ap + 20, "AP75": ap, "APs": ap - 10, "APm": ap, "APl": float("nan")}
    (result_dir / "eval.json").write_text(json.dumps(metrics))
    own = ap
    if result_dir != run_dir:
        own = ap + OWN_SPLIT_OFFSET
        (run_dir / "eval.json").write_text(json.dumps({**metrics, "AP": own}))
    rows = []
    if validated:
        # Four validations; the last quarter gains 0.5 AP (plateaued) or 2.5 AP (still rising).
        final_gain = 2.5 if rising else 0.5
        curve = [own - 10.0, own - 5.0, own - final_gain, own]
        for k, value in enumerate(curve, start=1):
            iteration = k * length // 4
            rows.append({"iter": iteration, "time": 1.0, "lr": 0.01, "loss": 1.0})  # a training row, not validation
            rows.append({"iter": iteration, "val/AP": value, "val/AP50": value + 20})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    if se is not None:
        # The bootstrap's cache, newer than the detections it was made from (200 resamples, seed 0).
        (result_dir / "detections_val.json").write_text("[]")
        cache = {"num_samples": 200, "seed": 0, "num_images": 4,
                 "metrics": {"AP": {"value": ap, "se": se}, "APs": {"value": ap - 10, "se": se}}}
        (result_dir / "bootstrap_ap.json").write_text(json.dumps(cache))


def write_fake_comparison(runs, seeds=(0, 1, 2)):
    """Every planned run of seeds 0-2 with :data:`AP`; adl seed 1 still rising at its end, gid seed 2
    without validation rows, the baseline's runs with the bootstrap SEs :data:`BASELINE_SE`."""
    for run in runs:
        index = list(seeds).index(run.seed)
        write_fake_run(
            run, AP[run.model][index],
            rising=(run.model, run.seed) == ("adl", 1),
            validated=(run.model, run.seed) != ("gid", 2),
            se=BASELINE_SE[index] if run.model == "baseline" else None,
        )
