"""The MSAD KD term through the real training path: Lightning's loop and `msadkit train --resume`.

The feature term is observed where the package computes it (``msad_feature_loss``); its unramped
value is recomputed there with ``ramp=1`` so the logged value can be checked against
``weight x min(1, k / ramp_iters) x feature term`` at every iteration k, before and after a resume.
"""

import json

import pytest

import msadkit.distill.msad as msad_module
from msadkit.cli import main
from tests.tiny_runs import write_teacher_run

WEIGHT = 2.5
RAMP_ITERS = 4
MODEL = ["model.fpn.out_channels=32", "model.fcos.num_convs=1"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher")
    write_teacher_run(run, "msad/msad_teacher_demo", MODEL)
    return run


def _student_args(run, teacher_run, tiny_overrides, max_iter):
    overrides = [o for o in tiny_overrides(run, max_iter=max_iter) if not o.startswith("output_dir=")]
    return [
        "train",
        "msad/msad_student_demo",
        *overrides,
        *MODEL,
        f"distill.teacher={teacher_run}",
        # The whole distill.losses list is replaced: one MSAD term with a weight and ramp of our own.
        'distill.losses=[{"type": "msad_feature", "weight": %s, "ramp_iters": %d}]' % (WEIGHT, RAMP_ITERS),
        "--output-dir",
        str(run),
        "--no-eval",
    ]


@pytest.fixture
def recorded_terms(monkeypatch):
    """Every call of ``msad_feature_loss`` during training: (ramp it was given, its value, value at ramp 1)."""
    calls = []
    original = msad_module.msad_feature_loss

    def spy(*args, ramp, **kwargs):
        value = original(*args, ramp=ramp, **kwargs)
        unramped = original(*args, ramp=1.0, **kwargs)
        calls.append((float(ramp), value.item(), unramped.item()))
        return value

    monkeypatch.setattr(msad_module, "msad_feature_loss", spy)
    return calls


def _logged(run, key):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {row["iter"]: row[key] for row in rows if key in row}


def test_kd_term_is_weight_times_ramp_times_feature_term_and_continues_after_cli_resume(
    tmp_path, teacher_run, tiny_overrides, recorded_terms
):
    run = tmp_path / "student"
    assert main(_student_args(run, teacher_run, tiny_overrides, max_iter=3)) == 0
    first = list(recorded_terms)
    assert len(first) == 3
    # Iterations 0, 1, 2 (the trainer's global step before each optimiser step): ramps 0, 1/4, 2/4.
    assert [ramp for ramp, _, _ in first] == pytest.approx([0.0, 0.25, 0.5])
    for ramp, value, unramped in first:
        assert unramped > 0
        assert value == pytest.approx(ramp * unramped, rel=1e-5)

    recorded_terms.clear()
    assert main([*_student_args(run, teacher_run, tiny_overrides, max_iter=6), "--resume"]) == 0
    resumed = list(recorded_terms)
    # The resumed run continues at iterations 3, 4, 5: the ramp goes on (3/4, then full), it does not restart.
    assert [ramp for ramp, _, _ in resumed] == pytest.approx([0.75, 1.0, 1.0])

    # What the run logged is the weighted term: weight x ramp x feature term.
    logged = _logged(run, "loss_msad_feature")
    expected = [WEIGHT * value for _, value, _ in first + resumed]
    # metrics.jsonl names a step by the iteration count after it: row i holds the loss of step i - 1.
    assert sorted(logged) == list(range(1, 7))
    assert [logged[i] for i in sorted(logged)] == pytest.approx(expected, rel=1e-4)
