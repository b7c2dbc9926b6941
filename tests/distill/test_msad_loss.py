import pytest
import torch
from torch import nn

from msadkit.distill.adapters import make_feature_adapters
from msadkit.distill.msad import kd_ramp, msad_feature_loss


def _constant_levels():
    # level 0: s = 2, t = 0.5 -> |s - t| = 1.5; level 1: s = -1, t = 1 -> |s - t| = 2
    student = [torch.full((1, 2, 2, 2), 2.0), torch.full((2, 1, 3, 3), -1.0)]
    teacher = [torch.full((1, 2, 2, 2), 0.5), torch.full((2, 1, 3, 3), 1.0)]
    return student, teacher


def test_l1_hand_computed_constant_maps():
    student, teacher = _constant_levels()
    # alpha * T^2 * |s/T - t/T|: 0.2 * 9 * 1.5 / 3 = 0.9 and 0.2 * 9 * 2 / 3 = 1.2
    loss = msad_feature_loss(student, teacher)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(2.1)
    assert msad_feature_loss(student, teacher, ramp=0.5).item() == pytest.approx(1.05)


def test_l1_equals_point_six_times_mean_abs_difference():
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 4, 8, 6), (2, 4, 4, 3), (2, 4, 2, 2)]
    student = [torch.randn(s, generator=gen) for s in shapes]
    teacher = [torch.randn(s, generator=gen) for s in shapes]
    expected = sum(0.6 * (s - t).abs().mean() for s, t in zip(student, teacher))
    torch.testing.assert_close(msad_feature_loss(student, teacher), expected)
    # Other alpha / T: alpha * T * mean|s - t|
    expected = sum(0.5 * 2.0 * (s - t).abs().mean() for s, t in zip(student, teacher))
    torch.testing.assert_close(msad_feature_loss(student, teacher, alpha=0.5, temperature=2.0), expected)


def test_mse_hand_computed_constant_maps():
    student, teacher = _constant_levels()
    # alpha * T^2 * (s/T - t/T)^2 = alpha * (s - t)^2: 0.2 * 2.25 = 0.45 and 0.2 * 4 = 0.8
    loss = msad_feature_loss(student, teacher, loss_type="mse")
    assert loss.item() == pytest.approx(1.25)
    # The temperature cancels for MSE.
    other_t = msad_feature_loss(student, teacher, loss_type="mse", temperature=7.0)
    assert other_t.item() == pytest.approx(1.25)


def test_mean_is_over_all_elements_per_level():
    # One element differs by 3 among 1*2*2*2 = 8: mean |s - t| = 3/8 -> 0.6 * 3/8 = 0.225
    student = [torch.zeros(1, 2, 2, 2)]
    teacher = [torch.zeros(1, 2, 2, 2)]
    teacher[0][0, 1, 0, 1] = 3.0
    assert msad_feature_loss(student, teacher).item() == pytest.approx(0.225)


def test_kd_ramp_values():
    assert kd_ramp(0) == 0.0
    assert kd_ramp(125) == pytest.approx(0.25)
    assert kd_ramp(250) == pytest.approx(0.5)
    assert kd_ramp(500) == 1.0
    assert kd_ramp(10_000) == 1.0
    assert kd_ramp(3, ramp_iters=4) == pytest.approx(0.75)
    assert kd_ramp(0, ramp_iters=0) == 1.0
    with pytest.raises(ValueError, match="iteration"):
        kd_ramp(-1)
    with pytest.raises(ValueError, match="ramp_iters"):
        kd_ramp(1, ramp_iters=-5)


def test_ramped_loss_is_zero_at_start_and_linear_in_between():
    student, teacher = _constant_levels()
    full = msad_feature_loss(student, teacher).item()
    assert msad_feature_loss(student, teacher, ramp=kd_ramp(0)).item() == 0.0
    for iteration in (50, 200, 499):
        value = msad_feature_loss(student, teacher, ramp=kd_ramp(iteration)).item()
        assert value == pytest.approx(full * iteration / 500)
    assert msad_feature_loss(student, teacher, ramp=kd_ramp(800)).item() == pytest.approx(full)


def test_no_gradient_reaches_the_teacher():
    gen = torch.Generator().manual_seed(1)
    student = [torch.randn(1, 3, 4, 4, generator=gen, requires_grad=True) for _ in range(2)]
    teacher = [torch.randn(1, 3, 4, 4, generator=gen, requires_grad=True) for _ in range(2)]
    msad_feature_loss(student, teacher).backward()
    for s in student:
        assert s.grad is not None and s.grad.abs().sum() > 0
    for t in teacher:
        assert t.grad is None


def test_student_gradient_matches_l1_formula():
    # d/ds of 0.6 * mean|s - t| is 0.6 * sign(s - t) / numel
    student = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]], requires_grad=True)
    teacher = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    msad_feature_loss([student], [teacher]).backward()
    expected = 0.6 * torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]]) / 4
    torch.testing.assert_close(student.grad, expected)


def test_minimising_the_loss_pulls_student_toward_teacher():
    gen = torch.Generator().manual_seed(2)
    student = nn.Parameter(torch.randn(1, 2, 4, 4, generator=gen))
    teacher = torch.randn(1, 2, 4, 4, generator=gen)
    # gradient is 2 * alpha * (s - t) / numel = 0.0125 (s - t); lr 40 halves the gap each step
    optimizer = torch.optim.SGD([student], lr=40.0)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = msad_feature_loss([student], [teacher], loss_type="mse")
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    torch.testing.assert_close(student.detach(), teacher, rtol=0, atol=1e-3)


def test_adapters_map_student_width_to_teacher_width():
    # Student has 4 channels, teacher 2; the adapter sums channel pairs.
    adapter = nn.Conv2d(4, 2, kernel_size=1, bias=False)
    with torch.no_grad():
        adapter.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).view(2, 4, 1, 1))
    student = torch.ones(1, 4, 2, 2)  # adapted: both channels = 2
    teacher = torch.full((1, 2, 2, 2), 0.5)  # |2 - 0.5| = 1.5 -> 0.6 * 1.5 = 0.9
    loss = msad_feature_loss([student], [teacher], adapters=[adapter])
    assert loss.item() == pytest.approx(0.9)
    loss.backward()
    assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0


def test_none_adapter_entry_leaves_level_unchanged():
    student, teacher = _constant_levels()
    assert msad_feature_loss(student, teacher, adapters=[None, None]).item() == pytest.approx(2.1)


def test_make_feature_adapters_builds_1x1_convs_per_level():
    adapters = make_feature_adapters(64, 256, num_levels=5)
    assert len(adapters) == 5
    for conv in adapters:
        assert isinstance(conv, nn.Conv2d)
        assert conv.kernel_size == (1, 1)
        assert (conv.in_channels, conv.out_channels) == (64, 256)
    student = [torch.randn(1, 64, 2, 2) for _ in range(5)]
    teacher = [torch.randn(1, 256, 2, 2) for _ in range(5)]
    loss = msad_feature_loss(student, teacher, adapters=adapters)
    assert torch.isfinite(loss) and loss.item() > 0


def test_channel_mismatch_without_adapters_names_the_level():
    student = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 4, 2, 2)]
    teacher = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)]
    with pytest.raises(ValueError, match=r"level 1: student has 4 channels but teacher has 2.*adapters"):
        msad_feature_loss(student, teacher)


def test_spatial_mismatch_names_the_level_and_shapes():
    student = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 3, 2)]
    teacher = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)]
    with pytest.raises(ValueError, match=r"level 2: student \(1, 2, 3, 2\) and teacher \(1, 2, 2, 2\)"):
        msad_feature_loss(student, teacher)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"loss_type": "smooth_l1"}, "loss_type"),
        ({"temperature": 0.0}, "temperature"),
        ({"adapters": [None]}, "adapters"),
    ],
)
def test_bad_arguments_raise(kwargs, pattern):
    student, teacher = _constant_levels()
    with pytest.raises(ValueError, match=pattern):
        msad_feature_loss(student, teacher, **kwargs)


def test_level_count_mismatch_raises():
    student, teacher = _constant_levels()
    with pytest.raises(ValueError, match="2 levels.*1"):
        msad_feature_loss(student, teacher[:1])
