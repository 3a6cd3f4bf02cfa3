"""cowmix_jax: semi-supervised semantic segmentation with cow masks, in JAX."""

from cowmix_jax import quiet_import

__version__ = "0.1.0"

quiet_import.install()  # TensorFlow's start-up lines, unless --verbose (quiet_import.py)
quiet_import.quiet_backend_probes()  # JAX's "Unable to initialize backend" lines, likewise
