"""The "fgd" distillation term (focal and global distillation): masks, losses against a reference
written from the paper's equations, options, training through a Distiller."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from msadkit.distill.distiller import Distiller
from msadkit.distill.fgd import OPTIONS, FGDLoss
from msadkit.distill.fgd_masks import fgd_masks
from msadkit.distill.registry import TERMS, build_term
from msadkit.errors import ConfigError, InputError
from msadkit.modeling.outputs import StudentOutputs, TeacherOutputs
from tests.distill.peer_terms_setup import distil_batch, reaches_the_student, tiny_fcos, tiny_retinanet

KEYS = ("fg", "bg", "attention", "global")

# Reference: the paper's equations, written per image, per cell and per box with exact fractions for
# the box-to-cell mapping; shares no code with msadkit.distill.fgd.


def _ref_masks(boxes, map_h, map_w, image_h, image_w, extent):
    """Per cell: the largest 1 / (rows * cols) of the boxes holding it; background 1 / N_bg."""
    fg = [[0.0] * map_w for _ in range(map_h)]
    for x1, y1, x2, y2 in boxes:
        fx1, fx2 = Fraction(x1) * map_w / Fraction(image_w), Fraction(x2) * map_w / Fraction(image_w)
        fy1, fy2 = Fraction(y1) * map_h / Fraction(image_h), Fraction(y2) * map_h / Fraction(image_h)
        if extent == "inclusive":
            cols = [j for j in range(-50, map_w + 50) if math.floor(fx1) <= j <= math.ceil(fx2)]
            rows = [i for i in range(-50, map_h + 50) if math.floor(fy1) <= i <= math.ceil(fy2)]
        else:
            # Cells [j, j + 1) whose interior meets the box's; a box too thin to meet any keeps its own cell.
            cols = [j for j in range(-50, map_w + 50) if j < fx2 and j + 1 > fx1] or [math.floor(fx1)]
            rows = [i for i in range(-50, map_h + 50) if i < fy2 and i + 1 > fy1] or [math.floor(fy1)]
        scale = 1.0 / (len(rows) * len(cols))
        for i in rows:
            for j in cols:
                if 0 <= i < map_h and 0 <= j < map_w:
                    fg[i][j] = max(fg[i][j], scale)
    background = sum(1 for row in fg for v in row if v == 0)
    bg = [[(1.0 / background if v == 0 else 0.0) for v in row] for row in fg]
    return torch.tensor(fg, dtype=torch.float64), torch.tensor(bg, dtype=torch.float64)


def _ref_attention(feature, temperature):
    """A^S = H W softmax(mean_c |F| / T) over cells, A^C = C softmax(mean_hw |F| / T) over channels."""
    c, h, w = feature.shape
    g_spatial = [[sum(feature[k, i, j].abs() for k in range(c)) / c for j in range(w)] for i in range(h)]
    e_spatial = [[torch.exp(g / temperature) for g in row] for row in g_spatial]
    z_spatial = sum(e for row in e_spatial for e in row)
    spatial = [[h * w * e / z_spatial for e in row] for row in e_spatial]
    g_channel = [feature[k].abs().sum() / (h * w) for k in range(c)]
    e_channel = [torch.exp(g / temperature) for g in g_channel]
    channel = [c * e / sum(e_channel) for e in e_channel]
    return spatial, channel


def _ref_gcblock(feature, block):
    """R(F) = F + W2 ReLU(LN(W1 sum_j softmax_j(Wk F_j) F_j)), one image ``(C, H, W)``."""
    c, h, w = feature.shape
    wk, bk = block.context_mask.weight.reshape(c), block.context_mask.bias.reshape(())
    conv1, norm, _, conv2 = block.channel_add
    flat = feature.reshape(c, h * w)
    logits = torch.stack([(wk * flat[:, j]).sum() + bk for j in range(h * w)])
    weights = torch.exp(logits - logits.max())
    weights = weights / weights.sum()
    context = torch.stack([(flat[k] * weights).sum() for k in range(c)])
    y = conv1.weight.reshape(c // 2, c) @ context + conv1.bias
    mean = y.mean()
    variance = ((y - mean) ** 2).mean()
    y = (y - mean) / torch.sqrt(variance + norm.eps) * norm.weight.reshape(-1) + norm.bias.reshape(-1)
    y = conv2.weight.reshape(c, c // 2) @ torch.clamp(y, min=0) + conv2.bias
    return feature + y[:, None, None]


def _ref_fgd(term, student_maps, teacher_maps, boxes, image_sizes, *, temperature, weights, extent):
    """alpha L_fg + beta L_bg + gamma L_at + lambda L_global summed over levels, per image then / N."""
    alpha, beta, gamma, lam = weights
    totals = {key: 0.0 for key in KEYS}
    for level, (s_level, t_level) in enumerate(zip(student_maps, teacher_maps)):
        batch = s_level.shape[0]
        if term.adapters is not None:
            conv = term.adapters[level]
            s_level = torch.einsum("oc,nchw->nohw", conv.weight[:, :, 0, 0], s_level) + conv.bias[None, :, None, None]
        student_block = term.student_context[level]
        teacher_block = (term.teacher_context or term.student_context)[level]
        for n in range(batch):
            s, t = s_level[n], t_level[n]
            c, h, w = s.shape
            fg, bg = _ref_masks(boxes[n], h, w, *image_sizes[n], extent)
            sp_t, ch_t = _ref_attention(t, temperature)
            sp_s, ch_s = _ref_attention(s, temperature)
            for i in range(h):
                for j in range(w):
                    for k in range(c):
                        err = (t[k, i, j] - s[k, i, j]) ** 2 * sp_t[i][j] * ch_t[k]
                        totals["fg"] = totals["fg"] + alpha * fg[i, j] * err / batch
                        totals["bg"] = totals["bg"] + beta * bg[i, j] * err / batch
            at = sum(abs(a - b) for a, b in zip(ch_s, ch_t))
            at = at + sum(abs(sp_s[i][j] - sp_t[i][j]) for i in range(h) for j in range(w))
            totals["attention"] = totals["attention"] + gamma * at / batch
            relation = ((_ref_gcblock(t, teacher_block) - _ref_gcblock(s, student_block)) ** 2).sum()
            totals["global"] = totals["global"] + lam * relation / batch
    return totals


def _randomise(module: nn.Module, seed: int) -> None:
    """Every parameter random (the zero-initialised last GcBlock conv would hide half the formula)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype) * 0.5)


IMAGE_SHAPE = (48, 40)
IMAGE_SIZES = [(48, 40), (40, 28)]
# Image 0: one box on cell borders of the 6x5 map (8 px cells) and a small box inside it; image 1:
# one box off the borders, one reaching the image's right edge; no box has exactly one cell.
BOXES = [
    [(8.0, 8.0, 24.0, 40.0), (13.0, 17.0, 18.5, 22.0)],
    [(3.5, 30.25, 27.0, 45.0), (20.0, 1.0, 40.0, 9.0)],
]


def _setting(*, extent="inclusive", temperature=0.5, separate=True, seed=0, box_reference="padded"):
    """A two-level term (student 3 channels -> adapter -> 6), float64, all parameters random."""
    term = FGDLoss(
        student_channels=3,
        teacher_channels=6,
        num_levels=2,
        temp=temperature,
        alpha_fgd=0.7,
        beta_fgd=1.3,
        gamma_fgd=0.4,
        lambda_fgd=0.9,
        mask_extent=extent,
        separate_gcblocks=separate,
        box_reference=box_reference,
    ).double()
    _randomise(term, seed)
    with torch.no_grad():
        for block in [*term.student_context, *(term.teacher_context or [])]:
            block.channel_add[1].bias.add_(1.5)  # most of the bottleneck passes the ReLU
    generator = torch.Generator().manual_seed(seed + 1)
    shapes = [(6, 5), (3, 3)]
    student = [torch.randn(2, 3, h, w, generator=generator, dtype=torch.float64).requires_grad_() for h, w in shapes]
    teacher = [torch.randn(2, 6, h, w, generator=generator, dtype=torch.float64) * 1.5 + 0.2 for h, w in shapes]
    targets = [
        {"boxes": torch.tensor(b, dtype=torch.float32), "labels": torch.zeros(len(b), dtype=torch.int64)} for b in BOXES
    ]
    return term, student, teacher, targets


def _gradients(value, term, student):
    inputs = list(student) + list(term.parameters())
    return torch.autograd.grad(value, inputs, allow_unused=True, retain_graph=True)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"extent": "overlap"},
        {"temperature": 0.8, "seed": 4},
        {"separate": False, "seed": 2},
        {"box_reference": "valid", "seed": 3},
    ],
)
def test_losses_and_gradients_match_the_equations(variant):
    term, student, teacher, targets = _setting(**variant)
    image_sizes = IMAGE_SIZES if variant.get("box_reference") == "valid" else [IMAGE_SHAPE] * 2
    out = term(StudentOutputs(None, student, None, IMAGE_SHAPE, IMAGE_SIZES), TeacherOutputs(teacher), targets, 0)
    ref = _ref_fgd(
        term,
        student,
        teacher,
        BOXES,
        image_sizes,
        temperature=variant.get("temperature", 0.5),
        weights=(0.7, 1.3, 0.4, 0.9),
        extent=variant.get("extent", "inclusive"),
    )
    for key in KEYS:
        assert out[key].item() == pytest.approx(ref[key].item(), rel=1e-10), key
        assert abs(ref[key].item()) > 1e-3, key  # every part carries weight in this setting
        got_all, want_all = _gradients(out[key], term, student), _gradients(ref[key], term, student)
        scale = max(w.abs().max().item() for w in want_all if w is not None)
        for got, want in zip(got_all, want_all):
            if want is None:
                assert got is None or not got.any()
                continue
            assert torch.allclose(got, want, rtol=1e-8, atol=1e-12 * scale), key
    # The global loss reaches every parameter of both GcBlocks of both levels.
    global_grads = dict(
        zip(
            [f"s{i}" for i in range(2)] + [n for n, _ in term.named_parameters()],
            _gradients(out["global"], term, student),
        )
    )
    for name, grad in global_grads.items():
        # Biases may cancel: softmax ignores a common shift, a shared block adds the same to both maps.
        if "context" in name and name.endswith("weight"):
            assert grad is not None and grad.abs().max() > 1e-6, name


def test_masks_on_a_hand_computed_case():
    # Image 64x64 on an 8x8 map: the box (8, 8, 24, 40) spans x 1..3, y 1..5 in cells.
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 40.0], [16.0, 16.0, 20.0, 20.0]])]
    fg, bg = fgd_masks(boxes, (8, 8), [(64.0, 64.0)])
    big = torch.zeros(8, 8)
    big[1:6, 1:4] = 1 / 15  # official: floor..ceil inclusive, 5 rows x 3 columns
    small = torch.zeros(8, 8)
    small[2:4, 2:4] = 1 / 4  # x, y 2..2.5 -> cells 2..3
    assert torch.allclose(fg[0], torch.maximum(big, small))
    assert bg[0][fg[0] == 0].allclose(torch.full(((fg[0] == 0).sum().item(),), 1 / 49))
    assert bg[0].sum().item() == pytest.approx(1.0)
    fg, _ = fgd_masks(boxes, (8, 8), [(64.0, 64.0)], extent="overlap")
    # The paper's cells of the box: 4 rows x 2 columns; the small box lies in cell (2, 2) alone.
    expected = torch.zeros(8, 8)
    expected[1:5, 1:3] = 1 / 8
    expected[2, 2] = 1.0
    assert torch.equal(fg[0], expected)
    # Half the map size (a low-resolution student's level covering the same image): half the cells.
    fg, _ = fgd_masks(boxes, (4, 4), [(64.0, 64.0)])
    assert fg[0].nonzero().tolist() == [[r, c] for r in range(0, 4) for c in range(0, 3)]
    # No box: all background, weights 1 / (H * W).
    fg, bg = fgd_masks([torch.zeros(0, 4)], (2, 3), [(64.0, 96.0)])
    assert not fg.any() and torch.allclose(bg, torch.full((1, 2, 3), 1 / 6))


def test_an_edge_on_a_cell_border_stays_there():
    # 992 / 1376 * 43 rounds to 30.999..., which would take ceil to 31 only by luck; the mask uses 992 * 43 / 1376.
    fg, _ = fgd_masks([torch.tensor([[0.0, 0.0, 992.0, 8.0]])], (1, 43), [(8.0, 1376.0)])
    assert fg[0, 0].nonzero().flatten().tolist() == list(range(0, 32))


TARGETS = [
    {"boxes": torch.tensor([[8.0, 8.0, 40.0, 56.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.tensor([[0.0, 16.0, 30.0, 40.0], [20.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([0, 2])},
]


def test_registered_and_defaults_are_the_official_retinanet_config():
    assert "fgd" in TERMS
    # yzd-v/FGD c03a6cf, configs/distillers/fgd/fgd_retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py L7-11.
    assert (
        OPTIONS["temp"],
        OPTIONS["alpha_fgd"],
        OPTIONS["beta_fgd"],
        OPTIONS["gamma_fgd"],
        OPTIONS["lambda_fgd"],
    ) == (
        0.5,
        0.001,
        0.0005,
        0.0005,
        0.000005,
    )
    term = build_term({"type": "fgd"}, student=tiny_fcos(8, seed=0), teacher=tiny_fcos(8, seed=1))
    assert term.adapters is None and len(term.student_context) == 5 and len(term.teacher_context) == 5
    assert term.name == "loss_fgd"


@pytest.mark.parametrize(
    ("arch", "student_channels", "teacher_channels"), [("fcos", 8, 16), ("retinanet", 8, 16), ("fcos", 8, 8)]
)
def test_training_step_through_a_distiller(arch, student_channels, teacher_channels):
    build = tiny_fcos if arch == "fcos" else tiny_retinanet
    student, teacher = build(student_channels, seed=0), build(teacher_channels, seed=1)
    images = torch.randn(2, 3, 96, 64, generator=torch.Generator().manual_seed(3))
    losses, term = distil_batch({"type": "fgd", "weight": 2.0}, student, teacher, images, TARGETS)
    keys = [f"loss_fgd_{key}" for key in KEYS]
    assert set(keys) <= set(losses)
    assert all(torch.isfinite(losses[key]) and losses[key].item() > 0 for key in keys)
    sum(losses[key] for key in keys).backward()
    assert reaches_the_student(student)
    assert all(p.grad is None for p in teacher.parameters())
    assert term.teacher_context[0].channel_add[-1].weight.grad.abs().sum() > 0  # the teacher's GcBlock learns
    assert (term.adapters is not None) == (student_channels != teacher_channels)
    if term.adapters is not None:
        assert term.adapters[0].weight.grad.abs().sum() > 0


def test_low_resolution_student_paired_with_teacher_levels_one_up():
    # The student sees the 0.5x copy: its p3..p6 have the shapes of the teacher's p4..p7 and cover the
    # whole padded batch, so the boxes land on the same cells of both.
    student = tiny_fcos(8, seed=0, levels=("p3", "p4", "p5", "p6"), input_downsample=2)
    teacher = tiny_fcos(8, seed=1, levels=("p4", "p5", "p6", "p7"))
    images = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(3))
    losses, _ = distil_batch({"type": "fgd"}, student, teacher, images, TARGETS)
    assert all(torch.isfinite(losses[f"loss_fgd_{key}"]) for key in KEYS)


def _unit_outputs(term_options=None):
    term, student, teacher, targets = _setting(**(term_options or {}))
    return term, StudentOutputs(None, student, None, IMAGE_SHAPE, IMAGE_SIZES), TeacherOutputs(teacher), targets


def test_weights_scale_their_own_loss_only():
    base, student, teacher, targets = _unit_outputs()
    reference = {k: v.item() for k, v in base(student, teacher, targets, 0).items()}
    for key, option in zip(KEYS, ("alpha_fgd", "beta_fgd", "gamma_fgd", "lambda_fgd")):
        setattr(base, option, getattr(base, option) * 3)
        changed = {k: v.item() for k, v in base(student, teacher, targets, 0).items()}
        setattr(base, option, getattr(base, option) / 3)
        for other in KEYS:
            factor = 3 if other == key else 1
            assert changed[other] == pytest.approx(factor * reference[other], rel=1e-12), (option, other)


def test_options_reach_the_term_and_bad_ones_are_named():
    student, teacher = tiny_fcos(8, seed=0), tiny_fcos(16, seed=1)
    term = build_term(
        {
            "type": "fgd",
            "temp": 0.8,
            "alpha_fgd": "2e-3",  # YAML 1.1 reads this as a string
            "beta_fgd": 1e-3,
            "gamma_fgd": 0.0,
            "lambda_fgd": 1e-5,
            "mask_extent": "overlap",
            "box_reference": "valid",
            "separate_gcblocks": False,
        },
        student=student,
        teacher=teacher,
    )
    assert (term.temp, term.alpha_fgd, term.beta_fgd, term.gamma_fgd, term.lambda_fgd) == (0.8, 2e-3, 1e-3, 0.0, 1e-5)
    assert (term.mask_extent, term.box_reference, term.teacher_context) == ("overlap", "valid", None)
    assert term.adapters[0].weight.shape == (16, 8, 1, 1)
    cases = [
        ({"tmp": 0.5}, "unknown option.*tmp"),
        ({"temp": "warm"}, "option 'temp' must be a number"),
        ({"separate_gcblocks": 1}, "option 'separate_gcblocks' must be a boolean"),
        ({"weight": -1.0}, "weight must be >= 0"),
        ({"temp": 0.0}, "temp must be > 0"),
        ({"beta_fgd": -0.1}, "beta_fgd must be a finite number >= 0"),
        ({"mask_extent": "box"}, "mask_extent must be one of"),
        ({"box_reference": "image"}, "box_reference must be one of"),
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            build_term({"type": "fgd", **options}, student=student, teacher=teacher)
        assert "fgd" in str(info.value) and "\n" not in str(info.value)


def test_mismatched_maps_are_refused():
    term, student, teacher, targets = _unit_outputs()
    with pytest.raises(InputError, match="level 1 of the student"):
        term(student, TeacherOutputs([teacher.levels[0], teacher.levels[0]]), targets, 0)
    with pytest.raises(InputError, match="the teacher 1"):
        term(student, TeacherOutputs(teacher.levels[:1]), targets, 0)


def test_bf16_autocast_gives_float32_finite_losses():
    student, teacher = tiny_fcos(8, seed=0), tiny_fcos(16, seed=1)
    term = build_term({"type": "fgd"}, student=student, teacher=teacher)
    distiller = Distiller(student=student, teacher=teacher, losses=[term]).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = distiller(torch.randn(2, 3, 96, 64), None, TARGETS)
    keys = [f"loss_fgd_{key}" for key in KEYS]
    assert all(losses[k].dtype == torch.float32 and torch.isfinite(losses[k]) and losses[k] > 0 for k in keys)
    sum(losses[k] for k in keys).backward()
    assert torch.isfinite(student.backbone.stem.weight.grad).all()
