"""msadkit models inside detectron2 (optional; needs a detectron2 installed from its repository).

Importing this package registers, in detectron2's registries:

- ``MsadkitDetector`` (``META_ARCH_REGISTRY``): any msadkit model (FCOS, RetinaNet, the MSAD
  multi-scale teacher, a distillation student with MSAD / ADL / GID losses) built from the msadkit
  config named by ``cfg.MSADKIT.CONFIG``, fed with detectron2's batched inputs;
- ``build_msadkit_slimmable_fpn_backbone`` (``BACKBONE_REGISTRY``): msadkit's ResNet + FPN as a
  detectron2 ``Backbone`` for detectron2's own meta-architectures.

The core package never imports this one, so msadkit works without detectron2.
"""

from msadkit.errors import MsadkitError

INSTALL_HINT = "install it from https://github.com/facebookresearch/detectron2 per its instructions"


def _require_detectron2() -> None:
    """Import detectron2 or raise :class:`MsadkitError` saying how to get it."""
    try:
        import detectron2  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "detectron2":
            raise MsadkitError(f"detectron2 is installed but cannot be imported ({exc}); reinstall it: {INSTALL_HINT}") from exc
        raise MsadkitError(f"detectron2 is not installed; {INSTALL_HINT}") from None
    except ImportError as exc:
        raise MsadkitError(f"detectron2 is installed but cannot be imported ({exc}); reinstall it: {INSTALL_HINT}") from exc


_require_detectron2()

# Imported for their registrations.
from msadkit.integrations.detectron2.backbone import MsadkitFPNBackbone, build_msadkit_slimmable_fpn_backbone  # noqa: E402
from msadkit.integrations.detectron2.checkpoint_convert import (  # noqa: E402
    detectron2_to_msadkit,
    msadkit_to_detectron2,
)
from msadkit.integrations.detectron2.config import add_msadkit_config, msadkit_config_from_cfg  # noqa: E402
from msadkit.integrations.detectron2.datasets import register_msadkit_datasets  # noqa: E402
from msadkit.integrations.detectron2.meta_arch import MsadkitDetector  # noqa: E402

__all__ = [
    "INSTALL_HINT",
    "MsadkitDetector",
    "MsadkitFPNBackbone",
    "add_msadkit_config",
    "build_msadkit_slimmable_fpn_backbone",
    "detectron2_to_msadkit",
    "msadkit_config_from_cfg",
    "msadkit_to_detectron2",
    "register_msadkit_datasets",
]
