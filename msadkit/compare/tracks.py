"""The two comparison tracks: their teachers, baseline, student configs, sizes and schedule.

- **same-resolution** (the ADL / GID setting): a width-0.5 FCOS teacher, a width-0.25 FCOS student,
  both on the same images (``gid/fcos_teacher_demo``, ``adl/fcos_student_demo``).
- **cross-resolution** (the MSAD setting): high-resolution teachers, the MSAD teacher with C-FF
  (``msad/msad_teacher_demo``) and a plain high-resolution FCOS (``msad/fcos_high_demo``), and a
  low-resolution student on the 0.5x copy (``msad/fcos_low_demo``; an ``@msad`` method uses
  ``msad/msad_student_demo``, which starts from its teacher's weights).

Every run of a track starts its backbone from the ``msadkit pretrain`` checkpoint of its width, at
learning rate :data:`LEARNING_RATE`, on one synthetic dataset (:class:`Budget`); the sizes chosen
are explained in :mod:`msadkit.compare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from msadkit.compare.methods import Method
from msadkit.errors import ConfigError

__all__ = [
    "LEARNING_RATE",
    "Budget",
    "TeacherSpec",
    "Track",
    "TRACKS",
    "track_named",
    "parse_tracks",
]

# The learning rate that beat 0.01 in every pretrained run of the learning-curve study
# (benchmarks/RESULTS.md); the demo uses it too.
LEARNING_RATE = 0.03
# The arguments of `msadkit pretrain` for --quick: seconds of training, only to run the path.
QUICK_PRETRAIN = ("--num-images", "8", "--image-size", "64", "--crop-size", "32", "--iterations", "3",
                  "--batch-size", "8")


@dataclass(frozen=True)
class Budget:
    """The one budget every run of a track shares.

    Attributes:
        image_size: side of the synthetic images (``data.synthetic.image_size``).
        num_train, num_val: synthetic training and validation images.
        iterations: length of every student, method and baseline run.
        teacher_iterations: length of every teacher run; the step-matched control trains
            ``teacher_iterations + iterations``.
        batch_size: images per step.
        pretrain: extra arguments of ``msadkit pretrain`` (empty: its defaults).
        num_report_val: validation images of the evaluation the table reports, made after training
            by ``msadkit evaluate`` into ``<run>/report`` (its first ``num_val`` images are the
            validation split seen during training); 0: the run's own final evaluation on ``num_val``.
    """

    image_size: int
    num_train: int
    num_val: int
    iterations: int
    teacher_iterations: int
    batch_size: int = 8
    pretrain: tuple[str, ...] = ()
    num_report_val: int = 0

    @property
    def reported_val(self) -> int:
        """The validation images behind the reported AP."""
        return self.num_report_val or self.num_val

    @property
    def control_iterations(self) -> int:
        """The step-matched control: as many iterations as the teacher and the student together."""
        return self.teacher_iterations + self.iterations

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first size that cannot work."""
        for name in ("image_size", "num_train", "num_val", "iterations", "teacher_iterations", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        value = self.num_report_val
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"--num-report-val must be a whole number >= 0, got {value!r}")


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher of a track: its config, backbone width and table label."""

    config: str
    width: float
    label: str


@dataclass(frozen=True)
class Track:
    """One setting of the comparison.

    Attributes:
        name: ``same-resolution`` or ``cross-resolution``.
        teachers: role -> teacher; the first is the teacher of a method without ``@msad``.
        baseline: config of the student trained without a teacher (and of the step-matched control).
        student_width: the students' backbone width.
        msad_student: config of an ``@msad`` method (None: the track has no MSAD teacher).
        multi_scale: train at 7/8, 1 and 9/8 of the image size (else one scale, as MSAD's 256-pixel
            padding needs).
        methods, quick_methods: the default methods of a full and of a ``--quick`` comparison.
        budget, quick_budget: sizes and schedule of a full and of a ``--quick`` comparison.
        model_overrides: settings of every model of the track beyond its packaged configs.
    """

    name: str
    label: str
    teachers: dict[str, TeacherSpec]
    baseline: str
    student_width: float
    msad_student: str | None
    multi_scale: bool
    methods: tuple[str, ...]
    quick_methods: tuple[str, ...]
    budget: Budget
    quick_budget: Budget
    model_overrides: tuple[str, ...] = ()

    @property
    def plain_teacher(self) -> str:
        return next(iter(self.teachers))

    def teacher_of(self, method: Method) -> str:
        """The teacher role a method learns from."""
        return "msad_teacher" if method.msad_teacher else self.plain_teacher

    def student_config(self, method: Method) -> str:
        return self.msad_student if method.msad_teacher and self.msad_student else self.baseline

    @property
    def cross_resolution(self) -> bool:
        return self.name == "cross-resolution"

    def widths(self) -> list[float]:
        """Every backbone width the track trains (each needs its pretrained checkpoint)."""
        return sorted({self.student_width, *(teacher.width for teacher in self.teachers.values())})

    def shared_overrides(self, budget: Budget) -> list[str]:
        """The dataset, batch and model settings of every run of the track."""
        size = budget.image_size
        scales = [size * 7 // 8, size, size * 9 // 8] if self.multi_scale else [size]
        return [
            f"data.synthetic.image_size={size}",
            f"data.synthetic.num_train={budget.num_train}",
            f"data.synthetic.num_val={budget.num_val}",
            f"data.train_short_sides=[{', '.join(map(str, scales))}]",
            f"data.train_max_size={max(scales) if not self.multi_scale else 2 * size}",
            f"data.test_short_side={size}",
            f"data.test_max_size={size if not self.multi_scale else 2 * size}",
            f"solver.batch_size={budget.batch_size}",
            *self.model_overrides,
        ]


# FCOS throughout: a freshly initialised RetinaNet spends its first ~150 demo iterations on the
# focal-loss plateau, which leaves nothing to compare in a CPU-sized run (benchmarks/RESULTS.md).
SAME_RESOLUTION = Track(
    name="same-resolution",
    label="same resolution: FCOS width 0.5 teacher -> width 0.25 student",
    teachers={"teacher": TeacherSpec("gid/fcos_teacher_demo", 0.5, "teacher (FCOS, width 0.5)")},
    baseline="adl/fcos_student_demo",
    student_width=0.25,
    msad_student=None,
    multi_scale=True,
    methods=("msad_feature", "adl", "gid", "fitnet", "cwd", "pkd", "mgd", "fgd", "crosskd", "gid+msad_feature"),
    quick_methods=("adl", "gid+msad_feature"),
    budget=Budget(image_size=128, num_train=256, num_val=128, iterations=150, teacher_iterations=300,
                  num_report_val=512),
    quick_budget=Budget(image_size=64, num_train=8, num_val=4, iterations=4, teacher_iterations=4, batch_size=2,
                        pretrain=QUICK_PRETRAIN, num_report_val=6),
    # The MSAD demo's slim FPN and head (32 channels, 2 tower convs) on both tracks: the head costs
    # more than the width-0.25 backbone at these sizes, and one head keeps the tracks alike.
    model_overrides=("model.fpn.out_channels=32", "model.fcos.num_convs=2"),
)

# MSAD pads every batch to a multiple of 256 so that the 0.5x copy's p2..p6 line up with the
# teacher's p3..p7: images below 256 pixels would cost a 256-pixel forward pass anyway.
CROSS_RESOLUTION = Track(
    name="cross-resolution",
    label="cross resolution: high-res teachers (256 px) -> low-res student (0.5x copy)",
    teachers={
        "fcos_high": TeacherSpec("msad/fcos_high_demo", 0.25, "FCOS high-res teacher (256 px)"),
        "msad_teacher": TeacherSpec("msad/msad_teacher_demo", 0.25, "MSAD teacher (C-FF, fused branch)"),
    },
    baseline="msad/fcos_low_demo",
    student_width=0.25,
    msad_student="msad/msad_student_demo",
    multi_scale=False,
    methods=("msad_feature@msad", "msad_feature", "adl", "gid", "fitnet", "cwd", "pkd", "mgd", "fgd", "crosskd"),
    quick_methods=("msad_feature@msad", "gid"),
    budget=Budget(image_size=256, num_train=256, num_val=64, iterations=150, teacher_iterations=300,
                  num_report_val=640),
    quick_budget=Budget(image_size=64, num_train=8, num_val=4, iterations=4, teacher_iterations=4, batch_size=2,
                        pretrain=QUICK_PRETRAIN, num_report_val=6),
)

TRACKS: dict[str, Track] = {track.name: track for track in (SAME_RESOLUTION, CROSS_RESOLUTION)}


def track_named(name: str, *, argument: str = "--track") -> Track:
    """The track called ``name``.

    Raises:
        ConfigError: no such track; the message names ``argument`` and the closest name.
    """
    import difflib

    if name in TRACKS:
        return TRACKS[name]
    close = difflib.get_close_matches(str(name), list(TRACKS), n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{argument}: unknown track {name!r}{hint}; choose from {', '.join(TRACKS)}")


def parse_tracks(names: Sequence[str], *, argument: str = "--track") -> list[Track]:
    """The tracks ``names`` name (``both`` for the two), in the order given, without repeats."""
    if not names:
        raise ConfigError(f"{argument}: name a track: {', '.join(TRACKS)} (or both)")
    expanded = [n for name in names for n in (TRACKS if name == "both" else [name])]
    tracks: list[Track] = []
    for name in expanded:
        track = track_named(name, argument=argument)
        if track not in tracks:
            tracks.append(track)
    return tracks
