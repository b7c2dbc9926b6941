"""Distillation, one home per paper: ``msad``, ``adl`` and ``gid`` (pure tensor functions beside the
config-facing term), the term registry, option handling and the :class:`Distiller`."""
