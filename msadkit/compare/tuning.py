"""Choosing each method's weight on the tuning seed, and the ``tuning.json`` the reported runs read.

Every method trains on the tuning seed (never a reported seed) at its official weight and at 0.25x
and 4x of it (:data:`~msadkit.compare.methods.WEIGHT_SCALES`); the weight whose run reaches the
highest final validation AP (its reported evaluation's, on the larger split where the budget has
one) is chosen (a tie keeps the earlier candidate, the official weight
first). ``<out>/<track>/tuning.json`` records every candidate's AP and the choice; the reported
runs of that track then train with the chosen weight, and the table's notes say which.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from msadkit.compare.plan import METHOD, PlannedRun
from msadkit.errors import ConfigError
from msadkit.utils.run_folder import EVAL_NAME, write_json_atomic

__all__ = ["TUNING_NAME", "choose_scale", "tuning_record", "write_tuning", "read_tuning", "chosen_scales"]

TUNING_NAME = "tuning.json"


def _final_ap(run_dir: Path) -> float | None:
    path = run_dir / EVAL_NAME
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("AP")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def choose_scale(candidates: Mapping[float, float | None]) -> float | None:
    """The scale with the highest AP (the first of equal ones); None when no candidate finished."""
    best: tuple[float, float] | None = None
    for scale, ap in candidates.items():
        if ap is not None and (best is None or ap > best[1]):
            best = (scale, ap)
    return None if best is None else best[0]


def tuning_record(runs: Sequence[PlannedRun], tuning_seed: int) -> dict[str, Any]:
    """``tuning.json``'s content from the tuning runs of one track (finished or not)."""
    methods: dict[str, Any] = {}
    for run in runs:
        if run.kind != METHOD:
            continue
        entry = methods.setdefault(run.model, {"candidates": []})
        entry["candidates"].append({"scale": run.scale, "AP": _final_ap(run.result_dir), "run": str(run.run_dir)})
    for entry in methods.values():
        entry["chosen_scale"] = choose_scale({c["scale"]: c["AP"] for c in entry["candidates"]})
    return {"tuning_seed": tuning_seed, "rule": "highest final validation AP on the tuning seed", "methods": methods}


def write_tuning(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``folder/tuning.json`` (atomically), merged over the methods already there."""
    path = Path(folder) / TUNING_NAME
    previous = read_tuning(folder)
    merged = dict(record)
    merged["methods"] = {**(previous or {}).get("methods", {}), **record["methods"]}
    if previous and previous.get("tuning_seed") != record["tuning_seed"]:
        merged["methods"] = dict(record["methods"])  # another tuning seed starts the record afresh
    write_json_atomic(path, merged)
    return path


def read_tuning(folder: str | Path) -> dict[str, Any] | None:
    """``folder/tuning.json``, or None when there is none.

    Raises:
        ConfigError: the file is not a JSON object with ``methods``.
    """
    path = Path(folder) / TUNING_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); run `msadkit compare --tune` again") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
        raise ConfigError(f"{path} holds no 'methods' object; run `msadkit compare --tune` again")
    return data


def chosen_scales(record: Mapping[str, Any] | None, tuning_seed: int | None = None) -> dict[str, float]:
    """Method name -> chosen weight multiple of a ``tuning.json`` record (methods without a choice left out).

    Raises:
        ConfigError: ``tuning_seed`` is given and the record was made on another seed.
    """
    if record is None:
        return {}
    if tuning_seed is not None and record.get("tuning_seed") != tuning_seed:
        raise ConfigError(
            f"--tuning-seed {tuning_seed}: tuning.json was made on seed {record.get('tuning_seed')}; "
            "tune again with this seed or pass the recorded one"
        )
    return {name: float(entry["chosen_scale"]) for name, entry in record["methods"].items()
            if isinstance(entry, dict) and entry.get("chosen_scale") is not None}
