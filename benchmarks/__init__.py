"""Timing and cost scripts, run from the repository root (``python -m benchmarks.NAME``;
those that import no sibling also as ``python benchmarks/NAME.py``)."""
