"""The kit's keys in detectron2's config, and the msadkit config they point to.

The mapping is deliberately simple: the msadkit config named by ``cfg.MSADKIT.CONFIG`` (plus
``cfg.MSADKIT.OVERRIDES``) drives the model (architecture, backbone, FPN, heads, distillation, pixel
normalisation, padding), and detectron2's own keys drive data loading, resizing, the solver,
checkpointing and evaluation. The ``data`` (other than ``size_divisibility``), ``solver`` and
``trainer`` sections of the msadkit config are not used on this path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectron2.config import CfgNode

from msadkit.config import load_config
from msadkit.errors import ConfigError

__all__ = [
    "PACKAGED_DETECTRON2_CONFIG_DIR",
    "DEFAULT_BACKBONE_OUT_FEATURES",
    "add_msadkit_config",
    "msadkit_config_from_cfg",
    "list_packaged_detectron2_configs",
    "resolve_detectron2_config",
]

PACKAGED_DETECTRON2_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# The levels detectron2's RetinaNet reads by default (MODEL.RETINANET.IN_FEATURES).
DEFAULT_BACKBONE_OUT_FEATURES = ("p3", "p4", "p5", "p6", "p7")


def add_msadkit_config(cfg: CfgNode) -> CfgNode:
    """Add the ``MSADKIT`` section to a detectron2 config (in place; also returned).

    Keys:
        ``MSADKIT.CONFIG``: a msadkit YAML path or packaged config name (``msad/msad_teacher_w025``).
        ``MSADKIT.OVERRIDES``: msadkit ``key=value`` overrides applied on top of it.
        ``MSADKIT.BACKBONE_OUT_FEATURES``: levels returned by ``build_msadkit_slimmable_fpn_backbone``
            when it serves one of detectron2's own meta-architectures.
    """
    cfg.MSADKIT = CfgNode()
    cfg.MSADKIT.CONFIG = ""
    cfg.MSADKIT.OVERRIDES = []
    cfg.MSADKIT.BACKBONE_OUT_FEATURES = list(DEFAULT_BACKBONE_OUT_FEATURES)
    return cfg


def msadkit_config_from_cfg(cfg: CfgNode) -> dict[str, Any]:
    """The resolved msadkit config that ``cfg.MSADKIT`` names.

    Raises:
        ConfigError: ``cfg`` has no ``MSADKIT`` section, ``MSADKIT.CONFIG`` is empty, or the msadkit
            config cannot be loaded (the message names the file or key).
    """
    section = cfg.get("MSADKIT")
    if section is None:
        raise ConfigError(
            "the detectron2 config has no MSADKIT section; call "
            "msadkit.integrations.detectron2.add_msadkit_config(cfg) before merging the YAML file"
        )
    if not section.CONFIG:
        raise ConfigError("MSADKIT.CONFIG is empty: set it to a msadkit YAML path or packaged config name")
    overrides = list(section.OVERRIDES)
    if not all(isinstance(text, str) for text in overrides):
        raise ConfigError(f"MSADKIT.OVERRIDES must be a list of 'key=value' strings, got {overrides!r}")
    return load_config(section.CONFIG, overrides)


def list_packaged_detectron2_configs() -> list[str]:
    """Names (without ``.yaml``) of the detectron2 configs shipped with this package."""
    return sorted(p.stem for p in PACKAGED_DETECTRON2_CONFIG_DIR.glob("*.yaml"))


def resolve_detectron2_config(name: str | Path) -> Path:
    """A detectron2 YAML file from a path or the name of a packaged one (``MSAD-Teacher-W025``).

    Raises:
        ConfigError: neither a file nor a packaged config.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    stem = path.name[:-5] if path.name.endswith(".yaml") else path.name
    packaged = PACKAGED_DETECTRON2_CONFIG_DIR / f"{stem}.yaml"
    if packaged.is_file() and path.parent == Path("."):
        return packaged
    raise ConfigError(
        f"detectron2 config {name} not found: it is neither a file nor a packaged config "
        f"(packaged: {', '.join(list_packaged_detectron2_configs())})"
    )
