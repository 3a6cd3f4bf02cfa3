"""The strong colour augmentation of FixMatch-style methods (UniMatch's "strong view"),
on the device, drawn from a key like the masks.

UniMatch V1 (``dataset/semi.py``) builds each strong view of an unlabelled crop with
torchvision: ``ColorJitter(0.5, 0.5, 0.5, 0.25)`` with probability 0.8 (brightness,
contrast and saturation factors ~ U(0.5, 1.5), a hue shift ~ U(-0.25, 0.25) of the
colour circle, the four in a random order), greyscale with probability 0.2, and a
Gaussian blur with sigma ~ U(0.1, 2.0) pixels with probability 0.5 (the sigma range is
``config.strong_blur_sigma_range`` here, in pixels at the training resolution: the
CPU-scale configs shrink it with their images, as the cow masks' sigmas). Here, on
``[0, 1]`` RGB images, hue, greyscale and blur are dm-pix's (``adjust_hue``,
``rgb_to_grayscale``, ``gaussian_blur``, the border repeated outwards as PIL's blur
does); brightness, contrast and saturation are the blends that torchvision's jitter
does through PIL's ``ImageEnhance`` (dm-pix's differ: its brightness adds a delta, its
contrast blends towards each channel's mean and its saturation scales HSV saturation,
TensorFlow's rules): brightness ``f x``, contrast
``m + f (x - m)`` with ``m`` the mean grey level of the image, saturation
``g + f (x - g)`` with ``g`` each pixel's grey level (rec601 luma, dm-pix's).

``sample(key, n)`` draws every random number of ``n`` images; ``apply(images, draws)``
is deterministic given them, so a test can redo it with dm-pix directly.
"""

from __future__ import annotations

import itertools

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

JITTER_PROBABILITY = 0.8
BRIGHTNESS = CONTRAST = SATURATION = 0.5  # factors ~ U(1 - x, 1 + x)
HUE = 0.25  # shift ~ U(-x, x), as a fraction of the colour circle
GREY_PROBABILITY = 0.2
BLUR_PROBABILITY = 0.5
BLUR_SIGMA = (0.1, 2.0)  # UniMatch's, in pixels


def blur_kernel_size(largest_sigma: float) -> int:
  """The blur kernel's width for sigmas up to ``largest_sigma``: 3 sigma each side."""
  return 2 * int(np.ceil(3 * largest_sigma)) + 1


BLUR_KERNEL_SIZE = blur_kernel_size(BLUR_SIGMA[1])


def check_blur_sigma_range(sigma_range) -> tuple[float, float]:
  """``config.strong_blur_sigma_range`` as ``(low, high)`` floats; ValueError naming the
  key unless ``0 < low <= high``."""
  try:
    low, high = (float(value) for value in sigma_range)
  except (TypeError, ValueError):
    low = high = float("nan")
  if not 0 < low <= high:
    raise ValueError(f"config.strong_blur_sigma_range={sigma_range!r}: expected (low, high) "
                     f"Gaussian blur sigmas in pixels with 0 < low <= high")
  return low, high
# The jitter's four operations, in the order their factors are stored; a draw's
# ``order`` is one of the 24 permutations of them.
OPERATIONS = ("brightness", "contrast", "saturation", "hue")
PERMUTATIONS = np.array(list(itertools.permutations(range(len(OPERATIONS)))), np.int32)


def sample(key: jax.Array, n: int,
           blur_sigma: tuple[float, float] = BLUR_SIGMA) -> dict[str, jax.Array]:
  """The random numbers of ``n`` strong views (blur sigmas ~ U(``blur_sigma``)).

  Returns:
    ``jitter``, ``grey``, ``blur`` ``[n]`` bool (whether each step applies);
    ``factors`` ``[n, 4]`` float32 (brightness, contrast, saturation factors, hue shift);
    ``order`` ``[n, 4]`` int32 (a permutation of the four operations);
    ``sigma`` ``[n]`` float32 (the blur's).
  """
  keys = jax.random.split(key, 7)
  low = jnp.array([1 - BRIGHTNESS, 1 - CONTRAST, 1 - SATURATION, -HUE])
  high = jnp.array([1 + BRIGHTNESS, 1 + CONTRAST, 1 + SATURATION, HUE])
  return {
      "jitter": jax.random.bernoulli(keys[0], JITTER_PROBABILITY, (n,)),
      "factors": jax.random.uniform(keys[1], (n, 4), minval=low, maxval=high),
      "order": jnp.asarray(PERMUTATIONS)[
          jax.random.randint(keys[2], (n,), 0, len(PERMUTATIONS))],
      "grey": jax.random.bernoulli(keys[3], GREY_PROBABILITY, (n,)),
      "blur": jax.random.bernoulli(keys[4], BLUR_PROBABILITY, (n,)),
      "sigma": jax.random.uniform(keys[5], (n,), minval=blur_sigma[0], maxval=blur_sigma[1]),
  }


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL's ``ImageEnhance.Contrast`` on ``[H, W, 3]``: a blend with the image's mean
  grey level (unclipped)."""
  mean = jnp.mean(pix.rgb_to_grayscale(image))
  return mean + factor * (image - mean)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """PIL's ``ImageEnhance.Color`` on ``[H, W, 3]``: a blend with each pixel's grey
  level (unclipped)."""
  grey = pix.rgb_to_grayscale(image, keep_dims=True)
  return grey + factor * (image - grey)


def _operation(index: jax.Array, image: jax.Array, factors: jax.Array) -> jax.Array:
  """Operation ``index`` of OPERATIONS on one ``[H, W, 3]`` image. All four are computed
  and one is selected (``lax.switch`` under ``vmap`` inside ``shard_map`` trips JAX's
  varying-axes typing on the grey-level blends)."""
  results = (image * factors[0], adjust_contrast(image, factors[1]),
             adjust_saturation(image, factors[2]), pix.adjust_hue(image, factors[3]))
  selected = results[0]
  for i, result in enumerate(results[1:], start=1):
    selected = jnp.where(index == i, result, selected)
  return selected


def _one(image: jax.Array, draws: dict[str, jax.Array], kernel_size: int) -> jax.Array:
  jittered = image
  for slot in range(len(OPERATIONS)):
    jittered = jnp.clip(_operation(draws["order"][slot], jittered, draws["factors"]), 0, 1)
  image = jnp.where(draws["jitter"], jittered, image)
  grey = pix.rgb_to_grayscale(image, keep_dims=True)  # the luma in all three channels
  image = jnp.where(draws["grey"], grey, image)
  return jnp.where(draws["blur"], blur(image, draws["sigma"], kernel_size), image)


def blur(image: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
  """dm-pix's Gaussian blur of ``image`` ``[H, W, C]`` with ``kernel_size`` (odd) taps,
  the border pixels repeated outwards as PIL's ``GaussianBlur`` (UniMatch's) does: a
  zero-padded ``SAME`` blur would darken a frame as wide as the kernel's half.
  Returns ``[H, W, C]``."""
  half = kernel_size // 2
  padded = jnp.pad(image, ((half, half), (half, half), (0, 0)), mode="edge")
  return pix.gaussian_blur(padded, sigma, kernel_size, padding="VALID")


def apply(images: jax.Array, draws: dict[str, jax.Array],
          kernel_size: int = BLUR_KERNEL_SIZE) -> jax.Array:
  """The strong views of ``images`` ``[N, H, W, 3]`` (RGB in [0, 1]) under ``draws``
  (``sample``'s): the jitter's operations in the drawn order, each result clipped to
  [0, 1] as torchvision's are, then greyscale, then the blur (a ``kernel_size``-wide
  kernel, ``blur_kernel_size`` of the largest sigma drawn from; the border repeated
  outwards, ``blur``). Returns ``[N, H, W, 3]`` in [0, 1]."""
  return jax.vmap(lambda image, draw: _one(image, draw, kernel_size))(images, draws)
