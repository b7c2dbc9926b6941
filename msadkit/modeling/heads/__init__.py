"""Dense prediction heads (FCOS, RetinaNet) and their shared conv tower."""
