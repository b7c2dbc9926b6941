"""The "mgd" term: masks drawn as documented (reproducible, off the global random stream), the loss
against a float64 reference with the convolutions written out, its options, its errors, and one
training step on tiny FCOS and RetinaNet students."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from msadkit.distill.mgd import OPTIONS, MGDTerm, draw_masks, mask_seed
from msadkit.distill.registry import TERMS, build_term
from msadkit.errors import ConfigError, InputError
from tests.distill.peer_terms_setup import conv1x1, outputs, random_maps, run_against_reference, tiny_fcos


def documented_masks(shapes, *, seed, iteration, lambda_mgd, rank=0):
    """The masks as the docs describe them: one CPU generator seeded with
    ``((seed * 1000003 + iteration) * 65537 + rank) mod 2^63``, ``rand(N, 1, H, W)`` level after
    level, 0 where ``u > 1 - lambda``."""
    generator = torch.Generator().manual_seed(((seed * 1000003 + iteration) * 65537 + rank) % 2**63)
    masks = []
    for n, h, w in shapes:
        u = torch.rand(n, 1, h, w, generator=generator)
        masks.append(torch.where(u > 1 - lambda_mgd, 0.0, 1.0))
    return masks


def conv3x3(x, weight, bias):
    """A 3x3 convolution with zero padding as a sum of nine shifted 1x1 products (no conv2d)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    out = bias[None, :, None, None].expand(x.shape[0], -1, h, w)
    for dy in range(3):
        for dx in range(3):
            out = out + torch.einsum("oc,nchw->nohw", weight[:, :, dy, dx], padded[:, :, dy : dy + h, dx : dx + w])
    return out


def reference_mgd(student_maps, teacher_maps, masks, aligns, blocks, alpha):
    """``alpha * sum_l sum (G(align(S) * M) - T)^2 / N`` with ``G = conv3x3 - relu - conv3x3``."""
    total = 0.0
    for s, t, m, (aw, ab), (w1, b1, w2, b2) in zip(student_maps, teacher_maps, masks, aligns, blocks):
        generated = conv3x3(torch.relu(conv3x3(conv1x1(s, aw, ab) * m, w1, b1)), w2, b2)
        total = total + ((generated - t) ** 2).sum() / s.shape[0]
    return alpha * total


def test_registered_with_the_official_retinanet_defaults():
    assert TERMS["mgd"] is not None
    assert OPTIONS == {"alpha_mgd": 2e-5, "lambda_mgd": 0.65, "seed": 0}
    term = build_term({"type": "mgd"}, student=tiny_fcos(8), teacher=tiny_fcos(16))
    assert (term.name, term.alpha_mgd, term.lambda_mgd, term.seed) == ("loss_mgd", 2e-5, 0.65, 0)
    assert len(term.aligns) == 5 and len(term.generators) == 5
    assert term.generators[0][0].weight.shape == (16, 16, 3, 3) and term.aligns[0].weight.shape == (16, 8, 1, 1)
    assert build_term({"type": "mgd"}, student=tiny_fcos(8), teacher=tiny_fcos(8)).aligns is None


def test_masks_are_the_documented_draw_of_the_step():
    shapes = [(2, 4, 5), (2, 2, 3), (2, 1, 1)]
    maps = [torch.zeros(n, 3, h, w) for n, h, w in shapes]
    term = MGDTerm(student_channels=3, teacher_channels=3, num_levels=3, seed=7, lambda_mgd=0.4)
    for iteration in (0, 1, 12345):
        expected = documented_masks(shapes, seed=7, iteration=iteration, lambda_mgd=0.4)
        for got, want in zip(term.masks_for(maps, iteration), expected):
            assert torch.equal(got, want)
    assert mask_seed(7, 12345, 3) == ((7 * 1000003 + 12345) * 65537 + 3) % 2**63
    # Another step or another seed draws another mask.
    first = draw_masks([(4, 16, 16)], lambda_mgd=0.65, seed=mask_seed(0, 0))[0]
    assert not torch.equal(first, draw_masks([(4, 16, 16)], lambda_mgd=0.65, seed=mask_seed(0, 1))[0])
    assert not torch.equal(first, draw_masks([(4, 16, 16)], lambda_mgd=0.65, seed=mask_seed(1, 0))[0])


def test_lambda_is_the_masked_fraction():
    for lambda_mgd in (0.0, 0.3, 0.65, 1.0):
        mask = draw_masks([(4, 100, 100)], lambda_mgd=lambda_mgd, seed=11)[0]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert float(1 - mask.mean()) == pytest.approx(lambda_mgd, abs=0.01)


def test_the_term_leaves_the_global_random_stream_alone_and_repeats_a_step_exactly():
    term = MGDTerm(student_channels=4, teacher_channels=4, num_levels=3)
    batch = outputs(random_maps(4, dtype=torch.float32), random_maps(4, dtype=torch.float32, seed=1))
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    first = term(*batch, [], 5)[""]
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(1000)  # whatever else a resumed run draws before the step
    assert torch.equal(term(*batch, [], 5)[""], first)
    assert not torch.equal(term(*batch, [], 6)[""], first)


@pytest.mark.parametrize(("lambda_mgd", "alpha_mgd"), [(0.65, 2e-5), (0.0, 1.0), (0.3, 0.5)])
def test_value_and_gradients_match_the_reference_in_float64(lambda_mgd, alpha_mgd):
    term = MGDTerm(
        student_channels=3, teacher_channels=4, num_levels=3, lambda_mgd=lambda_mgd, alpha_mgd=alpha_mgd, seed=3
    ).double()
    student_maps = random_maps(3, seed=0, grad=True)
    teacher_maps = random_maps(4, seed=1)
    masks = documented_masks([(2, 4, 5), (2, 2, 3), (2, 2, 2)], seed=3, iteration=9, lambda_mgd=lambda_mgd)
    masks = [m.double() for m in masks]

    def reference(inputs, twin):
        aligns = [(a.weight, a.bias) for a in twin.aligns]
        blocks = [(g[0].weight, g[0].bias, g[2].weight, g[2].bias) for g in twin.generators]
        return reference_mgd(inputs, teacher_maps, masks, aligns, blocks, alpha_mgd)

    value, expected, _ = run_against_reference(term, student_maps, teacher_maps, reference, iteration=9)
    assert value.item() == pytest.approx(expected.item(), rel=1e-9)
    if lambda_mgd > 0:
        # Both kinds of position take part: masked ones (the block fills them in) and kept ones.
        kept = sum(float(m.sum()) for m in masks)
        assert 0 < kept < sum(m.numel() for m in masks)


def test_a_fully_masked_student_gets_no_gradient_from_the_maps():
    term = MGDTerm(student_channels=3, teacher_channels=3, num_levels=3, lambda_mgd=1.0).double()
    student_maps = random_maps(3, seed=0, grad=True)
    value = term(*outputs(student_maps, random_maps(3, seed=1)), [], 0)[""]
    grads = torch.autograd.grad(value, student_maps)
    assert all(float(g.abs().max()) == 0.0 for g in grads)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": 1.0}, r"unknown option\(s\) alpha"),
        ({"alpha_mgd": "tiny"}, r"option 'alpha_mgd' must be a number, got 'tiny'"),
        ({"seed": "a"}, r"option 'seed' must be a number"),
        ({"seed": 1.5}, r"'mgd': seed must be an integer >= 0, got 1.5"),
        ({"seed": -1}, r"'mgd': seed must be an integer >= 0, got -1"),
        ({"weight": -1.0}, r"weight must be >= 0, got -1.0"),
        ({"alpha_mgd": -1.0}, r"'mgd': alpha_mgd must be >= 0"),
        ({"lambda_mgd": 1.5}, r"'mgd': lambda_mgd must lie in \[0, 1\], got 1.5"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        build_term({"type": "mgd", **options}, student=tiny_fcos(8), teacher=tiny_fcos(16))


def test_options_reach_the_computation():
    student, teacher = tiny_fcos(4), tiny_fcos(4)
    batch = outputs(random_maps(4, seed=0), random_maps(4, seed=1))
    base = build_term({"type": "mgd"}, student=student, teacher=teacher).double()
    scaled = build_term({"type": "mgd", "alpha_mgd": 4e-5}, student=student, teacher=teacher).double()
    scaled.load_state_dict(base.state_dict())
    assert scaled(*batch, [], 3)[""].item() == pytest.approx(2 * base(*batch, [], 3)[""].item(), rel=1e-12)
    reseeded = build_term({"type": "mgd", "seed": 1}, student=student, teacher=teacher).double()
    reseeded.load_state_dict(base.state_dict())
    assert reseeded(*batch, [], 3)[""].item() != pytest.approx(base(*batch, [], 3)[""].item(), rel=1e-6)
    unmasked = build_term({"type": "mgd", "lambda_mgd": 0.0}, student=student, teacher=teacher).double()
    unmasked.load_state_dict(base.state_dict())
    # With nothing masked the value is the same at every step.
    assert unmasked(*batch, [], 3)[""].item() == unmasked(*batch, [], 4)[""].item()


def test_impossible_pairs_are_refused_naming_the_term():
    with pytest.raises(ConfigError, match=r"type 'mgd': the student distils 2 levels"):
        build_term({"type": "mgd"}, student=tiny_fcos(8, levels=("p3", "p4")), teacher=tiny_fcos(8))
    term = MGDTerm(student_channels=4, teacher_channels=4, num_levels=3)
    student_maps = random_maps(4, dtype=torch.float32)
    with pytest.raises(InputError, match=r"'loss_mgd': level 1: .* differ in batch or spatial size"):
        term(*outputs(student_maps, [student_maps[0], torch.zeros(2, 4, 3, 2), student_maps[2]]), [], 0)
