"""cowmix_jax: semi-supervised semantic segmentation with cow masks, in JAX."""

__version__ = "0.1.0"
