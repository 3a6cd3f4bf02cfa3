"""Experiment tools: the resumable grid runner (``python -m cowmix_jax.experiments.ablation``),
its charts and learning curves, and the diagnostics of trained runs (BatchNorm
recalibration, the classes a model predicts). Timing scripts stay in ``benchmarks/``."""
