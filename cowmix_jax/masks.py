"""Random masks for mixing and occlusion: cow masks and box masks.

Everything here runs on device, is jittable and vectorised over the batch. Masks are
float32 arrays of 0/1 with shape ``[N, H, W]``; ``p`` is the proportion of ones.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp

Range = Tuple[float, float]


def gaussian_transfer_function(shape: Tuple[int, int], sigma: jax.Array) -> jax.Array:
  """Fourier transform of a unit-mass Gaussian kernel on the ``rfft2`` frequency grid.

  Args:
    shape: ``(H, W)`` of the spatial signal.
    sigma: ``[N]`` float32 standard deviations in pixels.

  Returns:
    ``[N, H, W // 2 + 1]`` float32 multipliers, ``exp(-2 pi^2 sigma^2 |f|^2)``.
  """
  height, width = shape
  freq_y = jnp.fft.fftfreq(height)[:, None]
  freq_x = jnp.fft.rfftfreq(width)[None, :]
  squared_freq = freq_y**2 + freq_x**2
  sigma = jnp.asarray(sigma, jnp.float32)[:, None, None]
  return jnp.exp(-2.0 * (jnp.pi**2) * sigma**2 * squared_freq)


def gaussian_blur_fft(images: jax.Array, sigma: jax.Array) -> jax.Array:
  """Circular Gaussian blur by FFT; the cost does not depend on sigma.

  Args:
    images: ``[N, H, W]`` float32.
    sigma: ``[N]`` float32, one blur width per image, in pixels.

  Returns:
    ``[N, H, W]`` float32 blurred images (periodic boundary).
  """
  height, width = images.shape[-2:]
  spectrum = jnp.fft.rfft2(images)
  spectrum = spectrum * gaussian_transfer_function((height, width), sigma)
  return jnp.fft.irfft2(spectrum, s=(height, width)).astype(jnp.float32)


def _uniform(key: jax.Array, n: int, value_range: Range) -> jax.Array:
  low, high = value_range
  return jax.random.uniform(key, (n,), jnp.float32, low, high)


def sample_log_uniform(key: jax.Array, n: int, value_range: Range) -> jax.Array:
  """``[n]`` float32 samples with ``log(x) ~ U(log(low), log(high))``."""
  low, high = value_range
  if low <= 0 or high < low:
    raise ValueError(f"sigma_range must satisfy 0 < low <= high, got {value_range}")
  return jnp.exp(_uniform(key, n, (jnp.log(low), jnp.log(high))))


def _check_p_range(p_range: Range) -> None:
  low, high = p_range
  if not 0.0 <= low <= high <= 1.0:
    raise ValueError(f"p_range must satisfy 0 <= low <= high <= 1, got {p_range}")


def _erfinv_threshold(smooth: jax.Array, p: jax.Array) -> jax.Array:
  """Threshold at which a proportion p of normal values falls below (paper, Sec. 3.4)."""
  mean = smooth.mean(axis=(1, 2))
  std = smooth.std(axis=(1, 2))
  return mean + std * jnp.sqrt(2.0) * jax.scipy.special.erfinv(2.0 * p - 1.0)


def _quantile_threshold(smooth: jax.Array, p: jax.Array) -> jax.Array:
  """Per-mask threshold giving exactly ``round(p * H * W)`` values at or below it."""
  flat = jnp.sort(smooth.reshape(smooth.shape[0], -1), axis=1)
  count = jnp.round(p * flat.shape[1]).astype(jnp.int32)
  kth = jnp.take_along_axis(flat, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
  return jnp.where(count == 0, -jnp.inf, kth)


def cow_masks(
    key: jax.Array,
    shape: Sequence[int],
    sigma_range: Range,
    p_range: Range,
    exact_proportion: bool = False,
) -> jax.Array:
  """Cow masks: thresholded Gaussian-blurred white noise (French et al., Sec. 3.4).

  For each mask: sigma ~ log U(sigma_range), p ~ U(p_range), noise ~ N(0, I) of the
  image size, circular FFT blur, and ones where the blurred noise is at or below
  ``mean + std * sqrt(2) * erfinv(2p - 1)`` (a proportion p of ones on average). With
  ``exact_proportion`` the threshold is the blurred noise's own p-quantile instead.

  Args:
    key: a PRNG key.
    shape: ``(N, H, W)``.
    sigma_range: ``(sigma_min, sigma_max)`` blur widths in pixels of this resolution.
    p_range: ``(p_min, p_max)`` range of the proportion of ones.
    exact_proportion: threshold at the per-mask quantile.

  Returns:
    ``[N, H, W]`` float32 masks of 0/1.
  """
  n, height, width = shape
  _check_p_range(p_range)
  sigma_key, p_key, noise_key = jax.random.split(key, 3)
  sigma = sample_log_uniform(sigma_key, n, sigma_range)
  p = _uniform(p_key, n, p_range)
  noise = jax.random.normal(noise_key, (n, height, width), jnp.float32)
  smooth = gaussian_blur_fft(noise, sigma)
  threshold_fn = _quantile_threshold if exact_proportion else _erfinv_threshold
  threshold = threshold_fn(smooth, p)
  return (smooth <= threshold[:, None, None]).astype(jnp.float32)


def box_sizes(
    key: jax.Array, n: int, image_size: Tuple[int, int], p_range: Range
) -> Tuple[jax.Array, jax.Array]:
  """Integer rectangle sizes of area ``p * H * W`` with a random aspect ratio.

  The height fraction is log-uniform in ``[p, 1]`` so that both sides fit the image;
  the width is then rounded to the nearest integer giving the requested area.

  Returns:
    ``(heights, widths)``, each ``[n]`` int32, ``1 <= h <= H`` and ``0 <= w <= W``.
  """
  height, width = image_size
  _check_p_range(p_range)
  p_key, aspect_key = jax.random.split(key)
  p = _uniform(p_key, n, p_range)
  safe_p = jnp.maximum(p, 1e-6)
  height_fraction = jnp.exp(jax.random.uniform(aspect_key, (n,)) * jnp.log(safe_p))
  box_height = jnp.clip(jnp.round(height_fraction * height), 1, height)
  box_width = jnp.clip(jnp.round(p * height * width / box_height), 0, width)
  return box_height.astype(jnp.int32), box_width.astype(jnp.int32)


def box_masks(key: jax.Array, shape: Sequence[int], p_range: Range) -> jax.Array:
  """Random axis-aligned rectangles (CutOut / CutMix), all four parameters random.

  Args:
    key: a PRNG key.
    shape: ``(N, H, W)``.
    p_range: range of the rectangle's area as a proportion of the image.

  Returns:
    ``[N, H, W]`` float32 masks, ones inside a rectangle lying inside the image.
  """
  n, height, width = shape
  size_key, y_key, x_key = jax.random.split(key, 3)
  box_height, box_width = box_sizes(size_key, n, (height, width), p_range)
  top = jax.random.randint(y_key, (n,), 0, height - box_height + 1)
  left = jax.random.randint(x_key, (n,), 0, width - box_width + 1)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  inside_rows = (rows >= top[:, None, None]) & (rows < (top + box_height)[:, None, None])
  inside_cols = (cols >= left[:, None, None]) & (cols < (left + box_width)[:, None, None])
  return (inside_rows & inside_cols).astype(jnp.float32)
