"""cowmix_jax: semi-supervised semantic segmentation with cow masks, in JAX."""

from cowmix_jax import quiet_import

__version__ = "0.1.0"

quiet_import.install()  # TensorFlow's start-up lines, unless --verbose (quiet_import.py)
