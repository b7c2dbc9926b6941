"""COCO evaluation of detections and of a finished run (eval.json, summary.json)."""
