"""The benchmark scripts; the effectiveness sweeps run as modules (``python -m benchmarks.<name>``)."""
