"""``job.json``, the record a job leaves in its run folder, and the one rule for reusing a folder.

A run folder is *finished* when its ``job.json`` says ``"finished"`` and the files the job promises
(its ``outputs``) exist. A finished folder is reused only when the config recorded there equals the
config the job asks for now; with any other config it is refused (:class:`JobConfigMismatchError`),
never overwritten. Anything else (no record, a failed or interrupted run) is run again; a training
job continues from its checkpoint, which is refused in the same way when the checkpoint was made
with another config (resuming it would mix two runs).
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

from msadkit.errors import ConfigError
from msadkit.utils.run_folder import CONFIG_NAME, write_json_atomic

if TYPE_CHECKING:
    from msadkit.jobs.spec import Job

__all__ = [
    "JOB_RECORD_NAME",
    "IGNORED_KEYS",
    "JobConfigMismatchError",
    "ReuseDecision",
    "read_job_record",
    "write_job_record",
    "config_differences",
    "decide_reuse",
    "now_iso",
]

JOB_RECORD_NAME = "job.json"
# Keys that name where a run lives, not what it computes: a moved folder holds the same run.
IGNORED_KEYS: tuple[str, ...] = ("output_dir", "parameters.output_dir")
_SHOWN_DIFFERENCES = 3


class JobConfigMismatchError(ConfigError):
    """A run folder holds a finished (or resumable) run made with another config than requested.

    Attributes:
        run_dir: the folder.
        keys: every differing key as a dotted path (``solver.base_lr``, ``distill.losses[0].weight``).
    """

    def __init__(self, message: str, run_dir: Path, keys: list[str]) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.keys = keys


class ReuseDecision(enum.Enum):
    """What the runner does with a job's run folder."""

    REUSE = "reuse"  # a finished run with the requested config: nothing to run
    RUN = "run"  # nothing finished there (or a forced re-run): run the command


def now_iso() -> str:
    """The current UTC time, to the second, as ISO 8601 (the format of ``job.json``'s times)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_job_record(run_dir: Path) -> dict[str, Any] | None:
    """The ``job.json`` of ``run_dir``, or None when there is none or it cannot be read."""
    try:
        record = json.loads((Path(run_dir) / JOB_RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_job_record(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``run_dir/job.json``, atomically (a reader never sees half a record)."""
    return write_json_atomic(Path(run_dir) / JOB_RECORD_NAME, record)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b  # True is a switch, 1 a number: not the same setting
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True  # YAML allows NaN settings, and NaN equals nothing, itself included
    return a == b


def config_differences(
    recorded: Any, requested: Any, ignored: Sequence[str] = IGNORED_KEYS, prefix: str = ""
) -> list[str]:
    """Dotted paths of the keys whose values differ, in the requested config's order.

    Mappings are compared key by key (a key on one side only differs), lists of the same length item
    by item (``losses[0].weight``), anything else by value (1 and 1.0 are equal, True and 1 are not).

    Args:
        recorded: the config found in a run folder.
        requested: the config asked for now.
        ignored: dotted paths left out of the comparison.
        prefix: the dotted path of ``recorded`` itself (for the recursion).
    """
    if prefix in ignored:
        return []
    if isinstance(recorded, dict) and isinstance(requested, dict):
        keys = [*requested, *(key for key in recorded if key not in requested)]
        found = []
        for key in keys:
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in recorded or key not in requested:
                found += [] if path in ignored else [path]
            else:
                found += config_differences(recorded[key], requested[key], ignored, path)
        return found
    if isinstance(recorded, list) and isinstance(requested, list) and len(recorded) == len(requested):
        found = []
        for index, (old, new) in enumerate(zip(recorded, requested)):
            found += config_differences(old, new, ignored, f"{prefix}[{index}]")
        return found
    if isinstance(recorded, (dict, list)) or isinstance(requested, (dict, list)):
        return [] if recorded == requested else [prefix]
    return [] if _same_value(recorded, requested) else [prefix]


class _Absent:
    """A key one config has and the other lacks, shown as such in the refusal."""

    def __repr__(self) -> str:
        return "absent"


_ABSENT = _Absent()


def _lookup(config: Any, dotted: str) -> Any:
    """The value at a path of :func:`config_differences` (``losses[0].weight``), or ``_ABSENT``."""
    node = config
    for part in dotted.replace("[", ".[").split("."):
        if part.startswith("["):
            index = int(part[1:-1])
            node = node[index] if isinstance(node, list) and index < len(node) else _ABSENT
        else:
            node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
    return node


def _legacy_training_record(job: Job) -> dict[str, Any] | None:
    """A training folder finished without the runner (no ``job.json``): its ``config.yaml`` is the
    resolved config the trainer used, so the same rule applies to it."""
    path = job.run_dir / CONFIG_NAME
    if job.kind != "train" or not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    # Through JSON, like the configs the runner records, so both sides compare alike.
    config = json.loads(json.dumps(config, default=str))
    if not isinstance(config, dict):
        return None
    return {"status": "finished" if job.outputs_exist() else "unfinished", "config": config, "source": str(path)}


def _refuse(job: Job, record: dict[str, Any], keys: list[str], what: str) -> JobConfigMismatchError:
    source = record.get("source", str(job.run_dir / JOB_RECORD_NAME))
    shown = "; ".join(
        f"{key} is {_lookup(record.get('config'), key)!r} there, {_lookup(job.config, key)!r} requested"
        for key in keys[:_SHOWN_DIFFERENCES]
    )
    more = f" (and {len(keys) - _SHOWN_DIFFERENCES} more)" if len(keys) > _SHOWN_DIFFERENCES else ""
    return JobConfigMismatchError(
        f"job {job.name!r}: {job.run_dir} holds {what} made with another config (recorded in {source}): "
        f"{shown}{more}. Choose another folder for this job, or delete {job.run_dir} to run it again",
        job.run_dir,
        keys,
    )


def decide_reuse(job: Job) -> ReuseDecision:
    """Reuse a finished run folder, or run the job; refuse a folder made with another config.

    Raises:
        JobConfigMismatchError: ``job.run_dir`` holds a finished run whose recorded config differs
            from ``job.config`` (unless ``job.rerun_finished``), or a training checkpoint to resume
            whose recorded config differs. The message names the folder and the first differing keys.
    """
    record = read_job_record(job.run_dir)
    if record is None:
        record = _legacy_training_record(job)
    if record is None:
        return ReuseDecision.RUN
    differences = config_differences(record.get("config"), job.config)
    finished = record.get("status") == "finished" and job.outputs_exist()
    if finished and not job.rerun_finished:
        if differences:
            raise _refuse(job, record, differences, "a finished run")
        return ReuseDecision.REUSE
    if differences and job.resumes():
        raise _refuse(job, record, differences, "an interrupted run to resume")
    return ReuseDecision.RUN
