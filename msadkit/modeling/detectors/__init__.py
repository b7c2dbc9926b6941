"""Detectors: the dense-detector base, FCOS, RetinaNet and the MSAD teacher with C-FF."""
