"""msadkit: knowledge distillation for object detection (MSAD, ADL/SAD, GID)."""

__version__ = "0.1.0"
