"""GID (general instance distillation): selection, losses and the ``gid`` term."""
