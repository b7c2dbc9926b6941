"""Training on the Lightning engine: task, trainer, schedule, checkpoints, health, loggers, validation, launching."""
