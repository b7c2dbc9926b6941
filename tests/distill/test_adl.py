import math

import pytest
import torch
import torch.nn.functional as F

from msadkit.distill.adl import adaptive_distillation_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _reference_terms(x: float, t: float, *, alpha: float, beta: float, gamma: float) -> float:
    """Un-normalised ADL of one element, written out with the math module."""
    p, q = _sigmoid(x), _sigmoid(t)
    cross_entropy = -(q * math.log(p) + (1 - q) * math.log(1 - p))
    entropy = -(q * math.log(q) + (1 - q) * math.log(1 - q))
    divergence = cross_entropy - beta * entropy
    weight = (1 - math.exp(-divergence)) ** gamma
    return -weight * (alpha * q * math.log(p) + (1 - alpha) * (1 - q) * math.log(1 - p))


def _reference_loss(student, teacher, *, alpha=0.5, beta=0.0, gamma=2.0, power=1.8) -> float:
    total, normalizer = 0.0, 0.0
    for row_s, row_t in zip(student, teacher):
        for x, t in zip(row_s, row_t):
            total += _reference_terms(x, t, alpha=alpha, beta=beta, gamma=gamma)
            normalizer += _sigmoid(t) ** power
    return total / max(normalizer, 1.0)


def test_single_element_by_hand():
    x, t = 0.3, -0.7
    p = 1 / (1 + math.exp(-0.3))
    q = 1 / (1 + math.exp(0.7))
    ce = -(q * math.log(p) + (1 - q) * math.log(1 - p))
    weight = (1 - math.exp(-ce)) ** 2
    expected = -weight * (0.5 * q * math.log(p) + 0.5 * (1 - q) * math.log(1 - p))  # q^1.8 < 1
    loss = adaptive_distillation_loss(torch.tensor([[x]]), torch.tensor([[t]]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_two_rows_with_entropy_term_and_normalizer_above_one():
    student = [[0.5, -1.0], [2.0, -0.2]]
    teacher = [[3.0, 2.5], [4.0, -1.5]]  # sum of q^power is about 2.7, so it divides
    expected = _reference_loss(student, teacher, alpha=0.25, beta=0.3, gamma=1.5, power=1.8)
    loss = adaptive_distillation_loss(
        torch.tensor(student), torch.tensor(teacher), alpha=0.25, beta=0.3, gamma=1.5, power=1.8
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    normalizer = sum(_sigmoid(t) ** 1.8 for row in teacher for t in row)
    assert normalizer > 1.0


def test_gamma_zero_is_balanced_cross_entropy_over_normalizer():
    torch.manual_seed(0)
    student = torch.randn(5, 3)
    teacher = torch.randn(5, 3) * 3
    q = torch.sigmoid(teacher)
    bce = F.binary_cross_entropy_with_logits(student, q, reduction="sum")
    expected = 0.5 * bce / torch.clamp(q.pow(1.8).sum(), min=1.0)
    loss = adaptive_distillation_loss(student, teacher, gamma=0.0, alpha=0.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_beta_one_uses_kl_divergence():
    x, t = 1.2, -0.4
    p, q = _sigmoid(x), _sigmoid(t)
    kl = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    balanced = -(0.5 * q * math.log(p) + 0.5 * (1 - q) * math.log(1 - p))
    expected = (1 - math.exp(-kl)) * balanced
    loss = adaptive_distillation_loss(torch.tensor([[x]]), torch.tensor([[t]]), beta=1.0, gamma=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_beta_one_gives_zero_weight_when_student_matches_teacher():
    logits = torch.tensor([[0.7, -2.0, 3.0]], dtype=torch.float64)
    student = logits.clone().requires_grad_(True)
    loss = adaptive_distillation_loss(student, logits, beta=1.0, gamma=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.all(student.grad.abs() < 1e-12)
    # With beta = 0 the teacher entropy keeps the weight, and the loss, positive.
    assert adaptive_distillation_loss(logits, logits, beta=0.0).item() > 0


def test_saturated_teacher_logits_fp32_by_hand():
    student = torch.zeros(1, 2, requires_grad=True)
    teacher = torch.tensor([[50.0, -50.0]])  # q is exactly 1 and 0 in fp32
    loss = adaptive_distillation_loss(student, teacher, beta=0.5)
    # CE = log 2 for both, entropy 0, weight (1 - 1/2)^2 = 1/4; normaliser max(1 + 0, 1) = 1.
    assert loss.item() == pytest.approx(2 * 0.25 * 0.5 * math.log(2), rel=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_saturated_inputs_finite_in_fp32_and_bf16_autocast(beta):
    teacher = torch.tensor([[50.0, -50.0, 50.0], [-50.0, 50.0, 0.0]])
    student_values = torch.tensor([[50.0, -50.0, -50.0], [3.0, -2.0, 50.0]])

    student = student_values.clone().requires_grad_(True)
    loss = adaptive_distillation_loss(student, teacher, beta=beta)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0

    student_bf16 = student_values.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf16 = adaptive_distillation_loss(student_bf16, teacher.to(torch.bfloat16), beta=beta)
    assert loss_bf16.dtype == torch.float32
    loss_bf16.backward()
    assert torch.isfinite(loss_bf16)
    assert torch.isfinite(student_bf16.grad.float()).all()
    assert student_bf16.grad.float().abs().sum() > 0
    # +-50 and the other values are exact in bfloat16, so both runs see the same numbers.
    assert loss_bf16.item() == pytest.approx(loss.item(), rel=1e-5)


def test_valid_mask_excludes_rows():
    torch.manual_seed(1)
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4) * 2
    valid = torch.tensor([True, False, True])
    loss = adaptive_distillation_loss(student, teacher, valid=valid)
    expected = _reference_loss(student[[0, 2]].tolist(), teacher[[0, 2]].tolist())
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    changed_teacher = teacher.clone()
    changed_teacher[1] = 40.0  # would dominate the normaliser if the row counted
    assert adaptive_distillation_loss(student, changed_teacher, valid=valid).item() == pytest.approx(loss.item())

    loss.backward()
    assert torch.all(student.grad[1] == 0)
    assert torch.all(student.grad[[0, 2]] != 0)

    everything = adaptive_distillation_loss(student, teacher, valid=torch.ones(3, dtype=torch.bool))
    assert everything.item() == pytest.approx(adaptive_distillation_loss(student, teacher).item())


def test_normalizer_floor_at_one():
    student = torch.tensor([[0.5, -0.5], [1.0, 0.0]])
    teacher = torch.full((2, 2), -4.0)  # q ~ 0.018, so sum q^1.8 << 1
    q = _sigmoid(-4.0)
    assert 4 * q**1.8 < 1
    unnormalised = sum(
        _reference_terms(x, -4.0, alpha=0.5, beta=0.0, gamma=2.0) for row in student.tolist() for x in row
    )
    loss = adaptive_distillation_loss(student, teacher)
    assert loss.item() == pytest.approx(unnormalised, rel=1e-5)


def test_empty_input_gives_zero_with_graph():
    student = torch.zeros(0, 3, requires_grad=True)
    loss = adaptive_distillation_loss(student, torch.zeros(0, 3))
    loss.backward()
    assert loss.item() == 0.0
    assert student.grad.shape == (0, 3)


def test_gradient_through_weight_matches_finite_differences():
    torch.manual_seed(2)
    student = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, dtype=torch.float64) * 2

    def loss_of_student(s):
        return adaptive_distillation_loss(s, teacher, alpha=0.3, beta=0.2, gamma=2.0)

    assert torch.autograd.gradcheck(loss_of_student, (student,), eps=1e-6, atol=1e-8)

    # The weight is not detached: the gradient differs from weight * d(balanced CE)/dx.
    loss_of_student(student).backward()
    p, q = torch.sigmoid(student.detach()), torch.sigmoid(teacher)
    ce = -(q * torch.log(p) + (1 - q) * torch.log(1 - p))
    entropy = -(q * torch.log(q) + (1 - q) * torch.log(1 - q))
    weight = (1 - torch.exp(-(ce - 0.2 * entropy))) ** 2
    d_balanced = -0.3 * q * (1 - p) + 0.7 * (1 - q) * p
    detached_grad = weight * d_balanced / torch.clamp(q.pow(1.8).sum(), min=1.0)
    assert not torch.allclose(student.grad, detached_grad, atol=1e-6)


def test_gradcheck_with_small_gamma_and_matching_logits_is_finite():
    # Away from D = 0 the loss is smooth even for gamma < 1: the analytic gradient matches finite
    # differences.
    teacher = torch.tensor([[0.5, -1.0], [2.0, -3.0]], dtype=torch.float64)
    student = (teacher + torch.tensor([[0.3, -0.2], [-0.4, 0.1]], dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda s: adaptive_distillation_loss(s, teacher, beta=1.0, gamma=0.5), (student,), eps=1e-6, atol=1e-8
    )
    # At D = 0 exactly (matching logits, beta = 1 makes D = KL) the weight (1 - exp(-D))^0.5 is 0 and
    # its derivative is infinite; the loss takes the zero sub-gradient: weight x dCE + CE x dweight = 0.
    matching = teacher.clone().requires_grad_(True)
    loss = adaptive_distillation_loss(matching, teacher, beta=1.0, gamma=0.5)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(matching.grad, torch.zeros_like(teacher))


def test_teacher_receives_no_gradient():
    student = torch.randn(2, 2, requires_grad=True)
    teacher = torch.randn(2, 2, requires_grad=True)
    adaptive_distillation_loss(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None


def test_argument_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        adaptive_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="gamma"):
        adaptive_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), gamma=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        adaptive_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), alpha=1.5)
    with pytest.raises(ValueError, match="beta"):
        adaptive_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), beta=2.0)
    with pytest.raises(ValueError, match="valid"):
        adaptive_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        adaptive_distillation_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
