"""Reproducible benchmarks: each figure is set against a baseline measured in the same run."""
