"""The jobs of a comparison: which runs, in which folders, with which settings, after which others.

Per track and per seed ``s`` (all with ``trainer.seed=s`` and the same pretrained backbone, so every
model of a seed starts from the same initialisation and sees the same data order):

- the teacher(s), ``teacher_iterations`` long;
- the baseline, the student without a teacher, ``iterations`` long;
- the step-matched control, the baseline's config trained ``teacher_iterations + iterations``;
- every method's student, ``iterations`` long, after its teacher of the same seed;
- on a track with ``@msad`` methods, MSAD's own ablation (:data:`TEACHER_INIT`): the student that
  starts from the MSAD teacher's weights and trains ``iterations`` with its distillation terms at
  weight 0, so that an ``@msad`` method's gain over it is its KD term's alone.

Folders: ``<out>/pretrained/`` (the ``msadkit pretrain`` checkpoint of every width, copied there
so the comparison names files of its own), ``<out>/<track>/seed<s>/<model>`` for the reported runs
and ``<out>/<track>/tuning/seed<t>/<method>_x<scale>`` for tuning. Every run validates at 3/4 of its
length (``trainer.eval_period``); that AP and the final evaluation's give the plateau mark. With a
budget's ``num_report_val``, each run is then evaluated (``msadkit evaluate``, with its bootstrap)
on that larger validation split into ``<run>/report``: the AP the table reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from msadkit.compare.methods import WEIGHT_SCALES, Method, losses_override
from msadkit.compare.tracks import LEARNING_RATE, Budget, Track
from msadkit.jobs import Job, command_job, msadkit_command, training_job
from msadkit.utils.run_folder import EVAL_NAME

__all__ = [
    "TEACHER",
    "BASELINE",
    "CONTROL",
    "ABLATION",
    "METHOD",
    "TEACHER_INIT",
    "REPORT_DIR",
    "PlannedRun",
    "track_dir",
    "seed_dir",
    "pretrained_file",
    "pretrain_jobs",
    "validation_period",
    "comparison_runs",
    "tuning_runs",
    "jobs_of",
]

TEACHER, BASELINE, CONTROL, ABLATION, METHOD = "teacher", "baseline", "control", "ablation", "method"
# The model name (and folder) of MSAD's teacher-initialisation ablation.
TEACHER_INIT = "teacher_init"


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a comparison and what the table needs to know of it.

    Attributes:
        job: the ``msadkit train`` job.
        track: the track's name.
        model: ``baseline``, ``control``, a teacher role or a method's name.
        kind: :data:`TEACHER`, :data:`BASELINE`, :data:`CONTROL`, :data:`ABLATION` or :data:`METHOD`.
        seed: its ``trainer.seed``.
        iterations: its length.
        scale: a method's weight, as a multiple of the official one (None for the others).
        report: the ``msadkit evaluate`` job of the reported evaluation on the larger validation split
            (:attr:`Budget.num_report_val`), after the training job; None: the run's own evaluation.
    """

    job: Job
    track: str
    model: str
    kind: str
    seed: int
    iterations: int
    scale: float | None = None
    report: Job | None = None

    @property
    def run_dir(self) -> Path:
        return self.job.run_dir

    @property
    def result_dir(self) -> Path:
        """The folder of the reported evaluation: ``eval.json``, ``detections_val.json`` and its bootstrap."""
        return self.report.run_dir if self.report is not None else self.run_dir


def track_dir(out: str | Path, track: Track) -> Path:
    return Path(out) / track.name


def seed_dir(out: str | Path, track: Track, seed: int, *, tuning: bool = False) -> Path:
    return track_dir(out, track) / ("tuning" if tuning else "") / f"seed{seed}"


def pretrained_file(out: str | Path, width: float) -> Path:
    """Where the comparison keeps the pretrained backbone of ``width``."""
    return Path(out).expanduser().absolute() / "pretrained" / f"slimmable_r50_w{width:g}.pt"


def _pretrain_name(width: float) -> str:
    return f"pretrain width {width:g}"


def pretrain_jobs(out: str | Path, tracks: Sequence[Track], budgets: Mapping[str, Budget]) -> list[Job]:
    """One ``msadkit pretrain`` job per backbone width the tracks use (cached by the command, copied here)."""
    jobs: dict[float, Job] = {}
    for track in tracks:
        for width in track.widths():
            if width in jobs:
                continue
            target = pretrained_file(out, width)
            command = msadkit_command("pretrain", "--width", f"{width:g}", *budgets[track.name].pretrain,
                                      "--out", str(target))
            jobs[width] = command_job(_pretrain_name(width), command, target.parent / f"w{width:g}",
                                      outputs=[target], log_name="pretrain.log")
    return list(jobs.values())


REPORT_DIR = "report"


def validation_period(length: int) -> int:
    """``trainer.eval_period`` of a run of ``length`` iterations: one validation at (or just before)
    3/4 of it, the start of the last quarter; the final evaluation is the other end."""
    return max(1, length * 3 // 4)


def _common(out: Path, track: Track, budget: Budget, width: float, length: int, overrides: Sequence[str]) -> list[str]:
    return [
        f"model.backbone.weights={pretrained_file(out, width)}",
        f"solver.base_lr={LEARNING_RATE:g}",
        "trainer.progress_bar=false",
        # Only the final checkpoint: a run of a few minutes restarts faster than it resumes.
        f"trainer.checkpoint_period={length}",
        # One validation at 3/4 of the run; with the final evaluation it gives the last quarter's
        # gain, the plateau mark. More would cost a validation pass each, and the schedule allows few.
        f"trainer.eval_period={validation_period(length)}",
        *track.shared_overrides(budget),
        *overrides,
    ]


class _Builder:
    """Makes the runs of one track at given seeds, naming jobs and folders one way."""

    def __init__(self, out: str | Path, track: Track, budget: Budget, overrides: Sequence[str], *,
                 tuning: bool = False, bootstrap_samples: int = 200) -> None:
        self.out, self.track, self.budget = Path(out).expanduser().absolute(), track, budget
        self.overrides, self.tuning, self.bootstrap_samples = list(overrides), tuning, bootstrap_samples

    def report(self, training: Job) -> Job | None:
        """The evaluation of ``training``'s final weights on the budget's larger validation split."""
        if not self.budget.num_report_val:
            return None
        folder = training.run_dir / REPORT_DIR
        command = msadkit_command("evaluate", str(training.run_dir), f"data.synthetic.num_val={self.budget.num_report_val}",
                                  "--output-dir", str(folder), "--device", "cpu",
                                  *(("--bootstrap", str(self.bootstrap_samples)) if self.bootstrap_samples >= 2 else ()))
        return command_job(f"{training.name} report", command, folder, outputs=[folder / EVAL_NAME],
                           needs=[training.name], log_name="evaluate.log")

    def name(self, model: str, seed: int) -> str:
        return f"{self.track.name}{' tuning' if self.tuning else ''} {model} seed {seed}"

    def run(self, model: str, kind: str, seed: int, config: str, width: float, length: int,
            defining: Sequence[str] = (), needs: Sequence[str] = (), scale: float | None = None,
            folder: str | None = None) -> PlannedRun:
        # What defines the comparison comes last, so no override for every run can change it.
        overrides = [*_common(self.out, self.track, self.budget, width, length, self.overrides),
                     f"trainer.seed={seed}", *defining]
        run_dir = seed_dir(self.out, self.track, seed, tuning=self.tuning) / (folder or model)
        needs = [*needs, _pretrain_name(width)]
        job = training_job(self.name(folder or model, seed), config, run_dir, overrides, iterations=length,
                           needs=needs)
        return PlannedRun(job, self.track.name, model, kind, seed, length, scale, self.report(job))

    def teacher(self, role: str, seed: int) -> PlannedRun:
        spec = self.track.teachers[role]
        return self.run(role, TEACHER, seed, spec.config, spec.width, self.budget.teacher_iterations)

    def method(self, method: Method, seed: int, scale: float, folder: str | None = None,
               model: str | None = None, kind: str = METHOD) -> PlannedRun:
        role = self.track.teacher_of(method)
        teacher_dir = seed_dir(self.out, self.track, seed, tuning=self.tuning) / role
        defining = [f"distill.teacher={teacher_dir}", losses_override(method, scale), f"method={model or method.name}",
                    "role=student"]
        if self.track.cross_resolution and not method.msad_teacher:
            defining.append("distill.cross_resolution=true")
        return self.run(model or method.name, kind, seed, self.track.student_config(method), self.track.student_width,
                        self.budget.iterations, defining, needs=[self.name(role, seed)],
                        scale=scale if kind == METHOD else None, folder=folder)

    def teacher_init(self, methods: Sequence[Method], seed: int) -> PlannedRun | None:
        """MSAD's ablation for the first ``@msad`` method: its student, start and teacher, every term
        at weight 0 (None when no method learns from the MSAD teacher)."""
        msad = next((method for method in methods if method.msad_teacher), None)
        if msad is None:
            return None
        return self.method(msad, seed, 0.0, model=TEACHER_INIT, kind=ABLATION)

    def teacher_roles(self, methods: Sequence[Method]) -> list[str]:
        """The plain teacher always (the high-resolution reference); the MSAD teacher when a method needs it."""
        needed = {self.track.teacher_of(method) for method in methods}
        return [role for role in self.track.teachers if role == self.track.plain_teacher or role in needed]


def comparison_runs(
    out: str | Path,
    track: Track,
    methods: Sequence[Method],
    seeds: Sequence[int],
    budget: Budget,
    *,
    scales: Mapping[str, float] | None = None,
    overrides: Sequence[str] = (),
    bootstrap_samples: int = 200,
) -> list[PlannedRun]:
    """The reported runs of one track, in launch order: teachers first (the others wait for them),
    then the controls (the longest of the rest), the baselines, the teacher-init ablation and the methods.

    Args:
        scales: method name -> weight multiple chosen by tuning (missing: 1.0, the official weight).
        overrides: config overrides for every run (before the settings that define the comparison).
        bootstrap_samples: resamples of each reported evaluation's bootstrap (below 2: none).
    """
    build = _Builder(out, track, budget, overrides, bootstrap_samples=bootstrap_samples)
    scales = scales or {}
    runs = [build.teacher(role, seed) for seed in seeds for role in build.teacher_roles(methods)]
    base, length = track.baseline, budget.iterations
    runs += [build.run(CONTROL, CONTROL, seed, base, track.student_width, budget.control_iterations)
             for seed in seeds]
    runs += [build.run(BASELINE, BASELINE, seed, base, track.student_width, length) for seed in seeds]
    runs += [run for seed in seeds if (run := build.teacher_init(methods, seed)) is not None]
    runs += [build.method(method, seed, float(scales.get(method.name, 1.0))) for seed in seeds for method in methods]
    return runs


def tuning_runs(
    out: str | Path,
    track: Track,
    methods: Sequence[Method],
    tuning_seed: int,
    budget: Budget,
    *,
    overrides: Sequence[str] = (),
    bootstrap_samples: int = 200,
) -> list[PlannedRun]:
    """The tuning runs of one track: its teachers and every method at each weight of
    :data:`~msadkit.compare.methods.WEIGHT_SCALES`, on the tuning seed alone."""
    build = _Builder(out, track, budget, overrides, tuning=True, bootstrap_samples=bootstrap_samples)
    runs = [build.teacher(role, tuning_seed) for role in build.teacher_roles(methods)]
    runs += [build.method(method, tuning_seed, scale, folder=f"{method.name}_x{scale:g}")
             for method in methods for scale in WEIGHT_SCALES]
    return runs


def jobs_of(pretrain: Sequence[Job], runs: Sequence[PlannedRun]) -> list[Job]:
    """The plan for :func:`msadkit.jobs.run_jobs`: the pretraining first, then the runs, each followed
    by its reported evaluation (which starts as soon as its run finishes)."""
    return [*pretrain, *(job for run in runs for job in (run.job, run.report) if job is not None)]
