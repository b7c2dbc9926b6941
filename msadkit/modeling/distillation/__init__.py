"""Distillation meta-architecture: a student, a frozen teacher and distillation loss terms."""
