"""ADL with the original op's normaliser over every teacher probability (``normalizer: all``)."""

import math

import pytest
import torch

from msadkit.distill.adl import OPTIONS, AdaptiveDistillationTerm, adaptive_distillation_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _element(x: float, t: float, alpha: float = 0.5, gamma: float = 2.0) -> float:
    """One element of the caffe2 op (beta 0): (1 - exp(-CE))^gamma times the balanced CE."""
    p, q = _sigmoid(x), _sigmoid(t)
    ce = -(q * math.log(p) + (1 - q) * math.log(1 - p))
    return -((1 - math.exp(-ce)) ** gamma) * (alpha * q * math.log(p) + (1 - alpha) * (1 - q) * math.log(1 - p))


def test_all_rows_normaliser_by_an_independent_formula():
    student = [[0.3, -1.0], [2.0, 0.5], [-0.4, 1.5]]
    teacher = [[2.5, 1.0], [3.0, 2.0], [4.0, 3.5]]
    valid = [True, False, True]
    total = sum(_element(x, t) for row_s, row_t, v in zip(student, teacher, valid) if v for x, t in zip(row_s, row_t))
    power_valid = sum(_sigmoid(t) ** 1.8 for row, v in zip(teacher, valid) if v for t in row)
    power_all = sum(_sigmoid(t) ** 1.8 for row in teacher for t in row)
    assert power_valid > 1 and power_all > power_valid  # both normalisers above the clamp at 1
    args = (torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64))
    mask = torch.tensor(valid)
    assert float(adaptive_distillation_loss(*args, valid=mask)) == pytest.approx(total / power_valid, rel=1e-12)
    assert float(adaptive_distillation_loss(*args, valid=mask, normalizer="all")) == pytest.approx(
        total / power_all, rel=1e-12
    )
    # Without ignored rows both normalisers agree.
    assert float(adaptive_distillation_loss(*args, normalizer="all")) == pytest.approx(
        float(adaptive_distillation_loss(*args)), rel=1e-12
    )


def test_normalizer_option_of_the_term():
    assert OPTIONS["normalizer"] == "valid"  # msadkit's default; "all" selects the original
    term = AdaptiveDistillationTerm(normalizer="all")
    assert term.normalizer == "all"
    with pytest.raises(ValueError, match="normalizer must be one of"):
        AdaptiveDistillationTerm(normalizer="valid_rows")
