"""Semi-supervised distillation (SAD): teacher pseudo-labels and the alternating training loader."""
