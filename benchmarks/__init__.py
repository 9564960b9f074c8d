"""Benchmarks: scripts that measure speed side by side and print ratios (``python -m benchmarks.<name>``)."""
