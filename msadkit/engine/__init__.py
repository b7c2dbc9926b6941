"""The engine, one sub-package per role: ``train`` > ``semi_supervised`` | ``evaluation`` > ``inference``."""
