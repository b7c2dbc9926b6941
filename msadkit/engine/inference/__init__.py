"""Inference on image files, `msadkit predict`, the deployable graph and its ONNX/TorchScript export."""
