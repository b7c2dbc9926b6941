"""Released MSAD checkpoints (detectron2 format) as msadkit models.

The MSAD code saves its teacher (``TFCOS``) and student (``SFCOS``) as detectron2 checkpoints:
``{"model": state_dict, ...}`` with these module names (docs/deviations.md):

================================================  ==============================================
official key                                      msadkit key (teacher / student)
================================================  ==============================================
``T_backbone.bottom_up.features.*``               ``detector.backbone.bottom_up.*`` (slimmable
                                                  R-50: convs sliced to the width, the BN of the
                                                  width; the other widths' BNs are not used)
``T_backbone.fpn_lateral<k>.*``                   ``detector.backbone.fpn.lateral_convs.p<k>.*``
``T_backbone.fpn_output<k>.*``                    ``detector.backbone.fpn.output_convs.p<k>.*``
``T_backbone.top_block.p6.*`` / ``p7.*``          ``detector.backbone.fpn.p6.*`` / ``p7.*``
``T_fcos_head.{cls,bbox}_tower.*``                ``detector.head.{cls,bbox}_tower.*``
``T_fcos_head.cls_logits.*`` / ``bbox_pred.*``    ``detector.head.cls_logits.*`` / ``bbox_pred.*``
``T_fcos_head.ctrness.weight``                    ``detector.head.centerness.weight``
``T_fcos_head.scales.<l>.scale`` (shape ``(1,)``)  ``detector.head.scales.<l>.scale`` (shape ``()``)
``SE.fc.0.weight`` / ``SE.fc.2.weight``            ``fusion.squeeze.weight`` / ``fusion.score.weight``
``S_backbone.*`` / ``S_fcos_head.*``              the student's ``backbone.*`` / ``head.*``
================================================  ==============================================

A student checkpoint also holds its frozen teacher (``T_*`` and ``SE``); those keys are checked
with the teacher's table and not written into the student. The official student computes P7 and
never uses it, so ``S_backbone.top_block.p7.*`` has no place in the student (it is checked, not
converted). Conversion is strict: every other key is used exactly once, every msadkit tensor is
filled, shapes are checked, and the width is read from the FPN's lateral convs and verified by
every backbone tensor.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

from torch import Tensor, nn

from msadkit.config.loader import load_config
from msadkit.errors import CheckpointError
from msadkit.modeling.backbones.slimmable import WIDTHS, official_module_pairs
from msadkit.modeling.registry import build_model
from msadkit.utils.checkpoint import format_keys, key_problems, load_checkpoint_file

__all__ = [
    "ROLES",
    "official_config_name",
    "infer_width",
    "convert_official_state",
    "convert_official_checkpoint",
    "msadkit_to_official",
]

ROLES = ("msad-teacher", "msad-student")
_WIDTH_TAGS = {0.25: "025", 0.5: "050", 0.75: "075", 1.0: "100"}
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# res<k> channels at width 1.0; the FPN lateral conv of level k reads int(channels * width).
_RES_CHANNELS = {2: 256, 3: 512, 4: 1024, 5: 2048}


def official_config_name(role: str, width: float) -> str:
    """The packaged config that runs the original computation for ``role`` at ``width``."""
    kind = {"msad-teacher": "msad_teacher", "msad-student": "msad_student"}[role]
    return f"msad/official/{kind}_w{_WIDTH_TAGS[width]}"


def infer_width(state: dict[str, Tensor], backbone: str, source: str) -> float:
    """The slimmable width of ``<backbone>`` from its FPN lateral convs (``(256, C_k * w, 1, 1)``).

    Raises:
        CheckpointError: a lateral conv is missing, or the four give no single width of
            :data:`WIDTHS`.
    """
    widths = {}
    for level, channels in _RES_CHANNELS.items():
        key = f"{backbone}.fpn_lateral{level}.weight"
        if key not in state:
            raise CheckpointError(f"{source}: no {key}; not an MSAD {backbone} checkpoint (cannot infer the width)")
        widths[key] = state[key].shape[1] / channels
    found = set(widths.values())
    if len(found) != 1 or next(iter(found)) not in WIDTHS:
        detail = ", ".join(f"{k} reads {int(state[k].shape[1])} channels" for k in widths)
        raise CheckpointError(f"{source}: the FPN lateral convs give no slimmable width of {WIDTHS}: {detail}")
    return float(next(iter(found)))


def _pairs(model: nn.Module, ours: str, head: str, width: float) -> list[tuple[str, str, str]]:
    """``(msadkit key, official key, how)`` for one backbone + FPN + head; ``how`` is copy|slice|scalar.

    Official backbone keys come out as ``backbone.*``; the caller names the backbone (``T_backbone``
    or ``S_backbone``). ``ours`` is the msadkit prefix of the detector (``detector.`` in a teacher).
    """
    width_index = WIDTHS.index(width)
    own = model.state_dict()
    pairs: list[tuple[str, str, str]] = []
    bottom_up = model.get_submodule(f"{ours}backbone.bottom_up")
    for our_module, their_module, is_conv in official_module_pairs(bottom_up):
        our_base, their_base = f"{ours}backbone.bottom_up.{our_module}", f"backbone.bottom_up.{their_module}"
        if is_conv:
            pairs.append((f"{our_base}.weight", f"{their_base}.weight", "slice"))
        else:
            pairs += [(f"{our_base}.{t}", f"{their_base}.bn.{width_index}.{t}", "copy") for t in _BN_TENSORS]
    for key in own:
        if key == "fusion.squeeze.weight":
            pairs.append((key, "SE.fc.0.weight", "copy"))
        elif key == "fusion.score.weight":
            pairs.append((key, "SE.fc.2.weight", "copy"))
        if not key.startswith(ours) or ".bottom_up." in key:
            continue
        rest = key[len(ours):]
        fpn = re.fullmatch(r"backbone\.fpn\.(lateral|output)_convs\.p(\d)\.(\w+)", rest)
        top = re.fullmatch(r"backbone\.fpn\.(p6|p7)\.(\w+)", rest)
        if fpn:
            pairs.append((key, f"backbone.fpn_{fpn[1]}{fpn[2]}.{fpn[3]}", "copy"))
        elif top:
            pairs.append((key, f"backbone.top_block.{top[1]}.{top[2]}", "copy"))
        elif rest.startswith("head."):
            name = rest[len("head."):].replace("centerness.", "ctrness.")
            how = "scalar" if re.fullmatch(r"scales\.\d\.scale", name) else "copy"
            pairs.append((key, f"{head}.{name}", how))
    return [p for p in pairs if p[0] in own]


def _official_prefixes(role_part: str) -> tuple[str, str]:
    """(backbone name, head name) of the teacher (``T``) or student (``S``) part."""
    return f"{role_part}_backbone", f"{role_part}_fcos_head"


def _fill(
    model: nn.Module,
    state: dict[str, Tensor],
    pairs: list[tuple[str, str, str]],
    source: str,
    missing: list[str],
    misfit: list[str],
) -> tuple[dict[str, Tensor], set[str]]:
    own = model.state_dict()
    filled: dict[str, Tensor] = {}
    used: set[str] = set()
    for our_key, their_key, how in pairs:
        if their_key not in state:
            missing.append(f"{their_key} (for {our_key})")
            continue
        if their_key in used:
            raise CheckpointError(f"{source}: {their_key} would fill two msadkit tensors")
        used.add(their_key)
        value, need = state[their_key], own[our_key].shape
        if how == "slice":
            fits = value.dim() == 4 and value.shape[2:] == need[2:]
            fits = fits and value.shape[0] >= need[0] and value.shape[1] >= need[1]
            value = value[: need[0], : need[1]] if fits else value
        elif how == "scalar":
            fits = value.numel() == 1
            value = value.reshape(need) if fits else value
        else:
            fits = value.shape == need
        if not fits:
            misfit.append(f"{their_key} (stored {tuple(value.shape)}, needs {tuple(need)})")
            continue
        filled[our_key] = value.detach().clone().to(own[our_key].dtype)
    missing += [f"{k} (no official key maps to it)" for k in own if k not in {p[0] for p in pairs}]
    return filled, used


def _other_width_norms(state: dict[str, Tensor], backbone: str, width: float) -> set[str]:
    """The BN tensors of the slimmable widths not in use (a switchable BN keeps one per width)."""
    index = WIDTHS.index(width)
    pattern = re.compile(rf"{re.escape(backbone)}\.bottom_up\.features\..*\.bn\.(\d+)\.\w+")
    return {k for k in state if (m := pattern.fullmatch(k)) and int(m[1]) != index}


def _build(config_name: str, num_classes: int, overrides: Sequence[str]) -> tuple[nn.Module, dict[str, Any]]:
    settings = [f"model.num_classes={num_classes}", "model.backbone.weights=null", *overrides]
    config = load_config(config_name, settings)
    return build_model(config), config


def _convert_part(
    state: dict[str, Tensor], role: str, part: str, width: float, source: str, overrides: Sequence[str]
) -> tuple[dict[str, Tensor], dict[str, Any], set[str], list[str], list[str]]:
    backbone, head = _official_prefixes(part)
    logits_key = f"{head}.cls_logits.weight"
    if logits_key not in state:
        raise CheckpointError(f"{source}: no {logits_key}; not an MSAD {role} checkpoint")
    model, config = _build(official_config_name(role, width), int(state[logits_key].shape[0]), overrides)
    ours = "detector." if role == "msad-teacher" else ""
    pairs = [
        (o, backbone + t[len("backbone"):] if t.startswith("backbone.") else t, how)
        for o, t, how in _pairs(model, ours, head, width)
    ]
    missing: list[str] = []
    misfit: list[str] = []
    filled, used = _fill(model, state, pairs, source, missing, misfit)
    used |= _other_width_norms(state, backbone, width)
    return filled, config, used, missing, misfit


def convert_official_state(
    state: dict[str, Tensor], role: str, source: str = "checkpoint", overrides: Sequence[str] = ()
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An official ``TFCOS`` / ``SFCOS`` state dict as an msadkit state dict and its config.

    Args:
        state: the detectron2 ``model`` state dict (an optional leading ``module.`` is dropped).
        role: ``"msad-teacher"`` (``TFCOS``) or ``"msad-student"`` (``SFCOS``).
        source: the file name, for error messages.
        overrides: ``key=value`` changes of the written config (dataset paths, ...).

    Returns:
        ``(msadkit_state, config)``: the weights of the model ``config`` builds (the packaged
        ``msad/official/`` config of the inferred width, ``model.num_classes`` from the classifier).

    Raises:
        CheckpointError: unknown role, width not inferable, or any missing, unused or misshapen
            key (all listed).
    """
    if role not in ROLES:
        raise CheckpointError(f"{source}: role must be one of {ROLES}, got {role!r}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source}: the values of {format_keys(sorted(not_tensors))} are not tensors")
    width = infer_width(state, "T_backbone", source)
    # The teacher part exists in both checkpoints (SFCOS keeps its frozen teacher).
    teacher_state, teacher_config, used, missing, misfit = _convert_part(
        state, "msad-teacher", "T", width, source, overrides
    )
    result, config = teacher_state, teacher_config
    if role == "msad-student":
        student_width = infer_width(state, "S_backbone", source)
        if student_width != width:
            raise CheckpointError(
                f"{source}: the student backbone has width {student_width} and the teacher {width}; "
                "MSAD builds both from one config"
            )
        result, config, student_used, student_missing, student_misfit = _convert_part(
            state, "msad-student", "S", width, source, overrides
        )
        used |= student_used | {k for k in state if k.startswith("S_backbone.top_block.p7.")}
        missing += student_missing
        misfit += student_misfit
    unused = sorted(k for k in state if k not in used)
    problems = key_problems(missing, unused, misfit)
    if problems:
        kind = "TFCOS (msad-teacher)" if role == "msad-teacher" else "SFCOS (msad-student)"
        raise CheckpointError(f"{source} does not fit the official {kind} at width {width}: " + "; ".join(problems))
    return result, config


def convert_official_checkpoint(
    path: str | os.PathLike, role: str, overrides: Sequence[str] = ()
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a released MSAD ``model_final.pth`` and convert it (see :func:`convert_official_state`)."""
    data = load_checkpoint_file(path)
    state = data.get("model") if isinstance(data.get("model"), dict) else None
    if state is None:
        raise CheckpointError(f"{path} is not a detectron2 checkpoint: it has no 'model' state dict")
    return convert_official_state(state, role, source=str(path), overrides=overrides)


def msadkit_to_official(model: nn.Module, role: str, width: float) -> dict[str, Tensor]:
    """The official key layout filled from an msadkit teacher (``role`` msad-teacher) or student.

    The inverse of the conversion for the tensors msadkit has; the backbone convs are written at
    the model's own width (a released checkpoint stores them at full width, of which the leading
    channels are used). The unused widths' BNs and a student's teacher part are not produced.
    Used by tests and by comparisons with the official code.
    """
    head = "T_fcos_head" if role == "msad-teacher" else "S_fcos_head"
    backbone = "T_backbone" if role == "msad-teacher" else "S_backbone"
    ours = "detector." if role == "msad-teacher" else ""
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    for our_key, their_key, how in _pairs(model, ours, head, width):
        if their_key.startswith("backbone."):
            their_key = backbone + their_key[len("backbone"):]
        value = own[our_key].detach().clone()
        out[their_key] = value.reshape(1) if how == "scalar" else value
    return out
