"""Model inputs to RGB in [0, 1] and back, for numpy and JAX arrays alike.

The input pipeline normalises images with ``conventions.NORMALISATIONS`` (a mean and a
std in 0..255 units, and BGR order for Caffe models). Whatever works on colours (the
strong colour augmentation, pictures, mask galleries) goes to RGB in [0, 1] with
``to_unit_rgb`` and back with ``from_unit_rgb``; both are plain arithmetic and a channel
flip, so they run on the device inside a jitted step as well as on the host.
"""

from __future__ import annotations

import numpy as np

from cowmix_jax.conventions import NORMALISATIONS


def _spec(normalisation: str) -> tuple[np.ndarray, np.ndarray, bool]:
  """The mean and std in [0, 1] units (float32 ``[3]``) and whether the order is BGR."""
  if normalisation not in NORMALISATIONS:
    raise ValueError(f"config.model.normalisation={normalisation!r}: choose one of "
                     f"{sorted(NORMALISATIONS)}")
  spec = NORMALISATIONS[normalisation]
  return (np.asarray(spec["mean"], np.float32) / 255, np.asarray(spec["std"], np.float32) / 255,
          spec["bgr"])


def to_unit_rgb(images, normalisation: str):
  """Model inputs ``[..., 3]`` -> RGB in [0, 1] units (not clipped: padding and
  out-of-range values stay as they are)."""
  mean, std, bgr = _spec(normalisation)
  rgb = images * std + mean
  return rgb[..., ::-1] if bgr else rgb


def from_unit_rgb(rgb, normalisation: str):
  """RGB ``[..., 3]`` in [0, 1] units -> model inputs (``to_unit_rgb``'s inverse)."""
  mean, std, bgr = _spec(normalisation)
  ordered = rgb[..., ::-1] if bgr else rgb
  return (ordered - mean) / std
