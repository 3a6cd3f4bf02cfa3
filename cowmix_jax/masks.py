"""Random masks for mixing and occlusion: cow masks and box masks.

Everything here runs on device, is jittable and vectorised over the batch. Masks are
float32 arrays of 0/1 with shape ``[N, H, W]``; ``p`` is the proportion of ones.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Range = tuple[float, float]


def gaussian_transfer_function(shape: tuple[int, int], sigma: jax.Array) -> jax.Array:
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


# The spectrum of blurred noise is dropped where the Gaussian's transfer function is
# below this (exp(-18.4)): far below float32 precision, and far tighter than
# scipy.ndimage.gaussian_filter's default kernel truncation at 4 sigma (exp(-8)).
SPECTRUM_CUTOFF = 1e-8


def fft_friendly_size(n: int) -> int:
  """The smallest integer >= n whose only prime factors are 2, 3 and 5."""
  m = n
  while True:
    k = m
    for prime in (2, 3, 5):
      while k % prime == 0:
        k //= prime
    if k == 1:
      return m
    m += 1


def _band_rows(canvas: int, max_frequency: float) -> np.ndarray:
  """Frequency indices k (of an FFT of size ``canvas``) with ``|k| / canvas <= max_frequency``."""
  limit = int(np.ceil(max_frequency * canvas))
  if 2 * limit + 1 >= canvas:
    return np.arange(canvas)
  return np.concatenate([np.arange(limit + 1), np.arange(canvas - limit, canvas)])


# Operations per canvas pixel and log2 of the canvas pixels that the FFT route costs, in
# the partial DFT's multiply-adds (partial_dft_is_cheaper).
FFT_COST_FACTOR = 8.0

# The field's correlation at lag d is exp(-d^2 / (4 sigma^2)): below 1e-4 from 6 sigma.
WRAP_MARGIN_SIGMAS = 6.0


def canvas_margin(sigma_max: float, sigmas: float = WRAP_MARGIN_SIGMAS) -> int:
  """Pixels added to each axis before the circular blur, so that the field does not
  wrap around from one edge to the opposite one: ``sigmas x sigma_max``, rounded up."""
  return int(np.ceil(sigmas * sigma_max))


def blurred_noise(key: jax.Array, shape: Sequence[int], sigma: jax.Array,
                  sigma_min: float, margin: int = 0) -> jax.Array:
  """White noise N(0, I) blurred by a Gaussian of width sigma, sampled in Fourier space.

  Statistically identical to ``gaussian_blur_fft(normal(key, shape), sigma)`` on a
  canvas of FFT-friendly size at least ``shape + margin``, cropped to ``shape``, so the
  field is exactly stationary. With ``margin`` 0 the canvas is about the image's size
  and the field is periodic (its left and right edges are neighbours); cow masks use
  ``canvas_margin(sigma_max)``, which leaves opposite edges independent.
  Only frequencies where the transfer function of the narrowest blur (``sigma_min``) is
  above ``SPECTRUM_CUTOFF`` are drawn, so wide blurs draw far fewer random numbers.
  The spectrum is made Hermitian explicitly, so any real inverse FFT gives the same field.

  Args:
    key: a PRNG key.
    shape: ``(N, H, W)``.
    sigma: ``[N]`` float32 blur widths, each at least ``sigma_min``.
    sigma_min: a static lower bound on sigma (sets the band that is sampled).
    margin: static extra canvas pixels along each axis.

  Returns:
    ``[N, H, W]`` float32.
  """
  n, height, width = shape
  canvas_h, canvas_w = fft_friendly_size(height + margin), fft_friendly_size(width + margin)
  max_frequency = np.sqrt(np.log(1 / SPECTRUM_CUTOFF) / (2 * np.pi**2 * sigma_min**2))
  rows = _band_rows(canvas_h, max_frequency)
  num_cols = min(int(np.ceil(max_frequency * canvas_w)), canvas_w // 2) + 1
  real_key, imag_key = jax.random.split(key)
  band_shape = (n, len(rows), num_cols)
  # E|Z_k|^2 = H * W, as for the DFT of real unit white noise on the canvas.
  scale = np.sqrt(canvas_h * canvas_w / 2.0)
  z = scale * jax.lax.complex(jax.random.normal(real_key, band_shape),
                              jax.random.normal(imag_key, band_shape))
  # Columns kx = 0 and kx = W/2 hold their own conjugates: make them Hermitian in ky.
  position = {int(k): i for i, k in enumerate(rows)}
  negated = np.array([position[(-int(k)) % canvas_h] for k in rows])
  self_conjugate_cols = [0] + ([canvas_w // 2] if canvas_w % 2 == 0 and
                               num_cols == canvas_w // 2 + 1 else [])
  for col in self_conjugate_cols:
    column = z[:, :, col]
    z = z.at[:, :, col].set((column + jnp.conj(column[:, negated])) / np.sqrt(2.0))
  freq_y = np.where(rows <= canvas_h // 2, rows, rows - canvas_h) / canvas_h
  freq_x = np.arange(num_cols) / canvas_w
  squared_freq = jnp.asarray(freq_y[:, None] ** 2 + freq_x[None, :] ** 2, jnp.float32)
  sigma = jnp.asarray(sigma, jnp.float32)[:, None, None]
  z = z * jnp.exp(-2.0 * (jnp.pi**2) * sigma**2 * squared_freq)
  band_to_field = (partial_inverse_dft if partial_dft_is_cheaper(
      len(rows), num_cols, canvas_h, canvas_w, height, width) else cropped_inverse_fft)
  return band_to_field(z, rows, canvas_h, canvas_w, height, width)


def cropped_inverse_fft(band: jax.Array, rows: np.ndarray, canvas_h: int, canvas_w: int,
                        height: int, width: int) -> jax.Array:
  """The real field of a band of ``rfft2`` coefficients (zero elsewhere) on the canvas,
  cropped to its top-left ``height x width``: the band is placed in the full half
  spectrum and inverted by ``irfft2``.

  Args:
    band: ``[N, R, C]`` complex64 coefficients of frequency rows ``rows`` (indices into
      the canvas FFT, ``[R]``) and columns ``0 .. C - 1``.

  Returns:
    ``[N, height, width]`` float32.
  """
  spectrum = _scatter_band(band, rows, canvas_h, canvas_w // 2 + 1)
  field = jnp.fft.irfft2(spectrum, s=(canvas_h, canvas_w))
  return field[:, :height, :width].astype(jnp.float32)


def partial_inverse_dft(band: jax.Array, rows: np.ndarray, canvas_h: int, canvas_w: int,
                        height: int, width: int) -> jax.Array:
  """What ``cropped_inverse_fft`` returns, computed only at the kept pixels and only
  from the band's coefficients: two matrix products with the inverse DFT's rows
  (``[height, R]``) and columns (``[C, width]``). Cheaper than the canvas FFT when the
  band is narrow (wide blurs), as cow masks' is.

  Column 0 and the Nyquist column count once, the others twice (with their conjugates),
  and imaginary parts left in columns 0 and Nyquist are ignored, as ``irfft2`` does.
  """
  num_cols = band.shape[-1]
  row_phase = 2 * np.pi * np.outer(np.arange(height), rows) / canvas_h  # [height, R]
  cols = np.arange(num_cols)
  weight = np.where((cols == 0) | (2 * cols == canvas_w), 1.0, 2.0) / (canvas_h * canvas_w)
  col_phase = 2 * np.pi * np.outer(cols, np.arange(width)) / canvas_w  # [C, width]
  row_cos, row_sin = np.cos(row_phase), np.sin(row_phase)
  # Complex products as real ones, each in one matrix product:
  # [real; imag] of the rows' transform = [[cos, -sin], [sin, cos]] @ [real; imag] of the
  # band, and the field = [real, imag] @ [weight cos; -weight sin] of the columns.
  row_matrix = jnp.asarray(np.block([[row_cos, -row_sin], [row_sin, row_cos]]), jnp.float32)
  col_matrix = jnp.asarray(np.concatenate([weight[:, None] * np.cos(col_phase),
                                           -weight[:, None] * np.sin(col_phase)]), jnp.float32)
  # Full float32 products: TPUs and GPUs would otherwise round the operands to bfloat16
  # or TF32, and the masks' thresholds would move.
  matmul = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)
  stacked = jnp.concatenate([jnp.real(band), jnp.imag(band)], axis=1)  # [N, 2R, C]
  rows_done = matmul("hr,nrc->nhc", row_matrix, stacked)  # [N, 2 height, C]
  side_by_side = jnp.concatenate([rows_done[:, :height], rows_done[:, height:]], axis=2)
  return matmul("nhc,cw->nhw", side_by_side, col_matrix)


def partial_dft_is_cheaper(num_rows: int, num_cols: int, canvas_h: int, canvas_w: int,
                           height: int, width: int) -> bool:
  """Whether ``partial_inverse_dft`` needs fewer operations than the canvas FFT: its
  multiply-adds against about ``FFT_COST_FACTOR x canvas pixels x log2(canvas pixels)``
  (calibrated on CPU with ``benchmarks/masks.py``)."""
  partial = 4 * height * num_rows * num_cols + 2 * height * num_cols * width
  pixels = canvas_h * canvas_w
  return partial < FFT_COST_FACTOR * pixels * np.log2(pixels)


def _scatter_band(band: jax.Array, rows: np.ndarray, canvas_h: int, full_cols: int) -> jax.Array:
  """Places ``[N, len(rows), C]`` band coefficients into a zero ``[N, canvas_h, full_cols]``."""
  n, num_rows, num_cols = band.shape
  band = jnp.pad(band, ((0, 0), (0, 0), (0, full_cols - num_cols)))
  if num_rows == canvas_h:
    return band
  low = int(np.sum(rows <= canvas_h // 2))
  gap = jnp.zeros((n, canvas_h - num_rows, full_cols), band.dtype)
  return jnp.concatenate([band[:, :low], gap, band[:, low:]], axis=1)


def _uniform(key: jax.Array, n: int, value_range: Range) -> jax.Array:
  low, high = value_range
  return jax.random.uniform(key, (n,), jnp.float32, low, high)


def sample_log_uniform(key: jax.Array, n: int, value_range: Range) -> jax.Array:
  """``[n]`` float32 samples with ``log(x) ~ U(log(low), log(high))``."""
  low, high = value_range
  if low <= 0 or high < low:
    raise ValueError(f"sigma_range must satisfy 0 < low <= high, got {value_range}")
  return jnp.exp(_uniform(key, n, (jnp.log(low), jnp.log(high))))


def check_p_range(p_range: Range) -> None:
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
    canvas_margin_sigmas: float = WRAP_MARGIN_SIGMAS,
) -> jax.Array:
  """Cow masks: thresholded Gaussian-blurred white noise (French et al., Sec. 3.4).

  For each mask: sigma ~ log U(sigma_range), p ~ U(p_range), noise ~ N(0, I) blurred by
  a Gaussian of width sigma on a canvas ``canvas_margin(sigma_max)`` pixels larger than
  the image in each direction, cropped to the image (drawn in Fourier space, see
  ``blurred_noise``: exactly stationary, cost independent of sigma, and no wrap-around
  from one edge to the opposite one), and ones where the blurred noise is at or below
  ``mean + std * sqrt(2) * erfinv(2p - 1)`` (a proportion p of ones on average). With
  ``exact_proportion`` the threshold is the blurred noise's own p-quantile instead.

  Args:
    key: a PRNG key.
    shape: ``(N, H, W)``.
    sigma_range: ``(sigma_min, sigma_max)`` blur widths in pixels of this resolution
      (Python floats: static under jit, since sigma_min sets the sampled band).
    p_range: ``(p_min, p_max)`` range of the proportion of ones.
    exact_proportion: threshold at the per-mask quantile.
    canvas_margin_sigmas: the canvas margin in units of sigma_max; 0 draws on a canvas
      the size of the image, whose masks wrap around (as before this option existed).

  Returns:
    ``[N, H, W]`` float32 masks of 0/1.
  """
  n, height, width = shape
  check_p_range(p_range)
  sigma_key, p_key, noise_key = jax.random.split(key, 3)
  sigma = sample_log_uniform(sigma_key, n, sigma_range)
  p = _uniform(p_key, n, p_range)
  smooth = blurred_noise(noise_key, (n, height, width), sigma, float(sigma_range[0]),
                         margin=canvas_margin(float(sigma_range[1]), canvas_margin_sigmas))
  threshold_fn = _quantile_threshold if exact_proportion else _erfinv_threshold
  threshold = threshold_fn(smooth, p)
  return (smooth <= threshold[:, None, None]).astype(jnp.float32)


def box_sizes(
    key: jax.Array, n: int, image_size: tuple[int, int], p_range: Range
) -> tuple[jax.Array, jax.Array]:
  """Integer rectangle sizes of area ``p * H * W`` with a random aspect ratio.

  The height fraction is log-uniform in ``[p, 1]`` so that both sides fit the image.
  The shorter side is rounded first and the longer one derived from it, so the area is
  off by at most half a row of the longer side.

  Returns:
    ``(heights, widths)``, each ``[n]`` int32 with ``0 <= h <= H`` and ``0 <= w <= W``.
  """
  height, width = image_size
  check_p_range(p_range)
  p_key, aspect_key = jax.random.split(key)
  p = _uniform(p_key, n, p_range)
  area = p * height * width
  height_fraction = jnp.exp(jax.random.uniform(aspect_key, (n,)) * jnp.log(jnp.maximum(p, 1e-6)))
  exact_height = height_fraction * height
  exact_width = area / jnp.maximum(exact_height, 1e-6)
  height_first = exact_height <= exact_width
  rounded_height = jnp.clip(jnp.round(exact_height), 1, height)
  rounded_width = jnp.clip(jnp.round(exact_width), 1, width)
  box_height = jnp.where(height_first, rounded_height, jnp.round(area / rounded_width))
  box_width = jnp.where(height_first, jnp.round(area / rounded_height), rounded_width)
  box_height = jnp.clip(box_height, 0, height).astype(jnp.int32)
  box_width = jnp.clip(box_width, 0, width).astype(jnp.int32)
  return box_height, box_width


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
  return _box_mask(top, left, box_height, box_width, height, width)


# Candidate shapes and places drawn per mask by ``cutmix_boxes`` (see there).
CUTMIX_BOX_CANDIDATES = 512


def _box_mask(top, left, box_height, box_width, height: int, width: int) -> jax.Array:
  """``[N, H, W]`` float32 ones on rows ``[top, top + h)`` and columns ``[left, left + w)``."""
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  inside_rows = (rows >= top[:, None, None]) & (rows < (top + box_height)[:, None, None])
  inside_cols = (cols >= left[:, None, None]) & (cols < (left + box_width)[:, None, None])
  return (inside_rows & inside_cols).astype(jnp.float32)


def cutmix_boxes(key: jax.Array, shape: Sequence[int], area_range: Range = (0.02, 0.4),
                 aspect_range: Range = (0.3, 1 / 0.3)) -> jax.Array:
  """UniMatch's CutMix boxes (``obtain_cutmix_box`` in its ``dataset/transform.py``).

  Each mask draws one area ``a ~ U(area_range) x H x W``; then each candidate draws an
  aspect ratio ``r ~ U(aspect_range)``, the size ``h = floor(sqrt(a r))``,
  ``w = floor(sqrt(a / r))`` and a top-left corner uniform over the whole image, and
  the first candidate whose box lies inside the image is kept (UniMatch draws the area
  once and redraws the rest until the box fits). Of ``CUTMIX_BOX_CANDIDATES``
  candidates none fits with a probability below 2e-9 at the default ranges on crops
  from square to 3:5 (at the largest area, 0.4, a candidate fits with probability 0.04
  to 0.07); the last one is then cut at the image's border.

  Args:
    key: a PRNG key.
    shape: ``(N, H, W)``.
    area_range: the box's area as a proportion of the image.
    aspect_range: the range of height / width.

  Returns:
    ``[N, H, W]`` float32 masks, ones inside the box.
  """
  n, height, width = shape
  check_p_range(area_range)
  if not 0 < aspect_range[0] <= aspect_range[1]:
    raise ValueError(f"aspect_range must satisfy 0 < low <= high, got {aspect_range}")
  k = CUTMIX_BOX_CANDIDATES
  area_key, aspect_key, top_key, left_key = jax.random.split(key, 4)
  area = jax.random.uniform(area_key, (n, 1), minval=area_range[0],
                            maxval=area_range[1]) * height * width
  aspect = jax.random.uniform(aspect_key, (n, k), minval=aspect_range[0],
                              maxval=aspect_range[1])
  box_height = jnp.floor(jnp.sqrt(area * aspect)).astype(jnp.int32)
  box_width = jnp.floor(jnp.sqrt(area / aspect)).astype(jnp.int32)
  top = jax.random.randint(top_key, (n, k), 0, height)
  left = jax.random.randint(left_key, (n, k), 0, width)
  fits = (top + box_height <= height) & (left + box_width <= width)
  chosen = jnp.where(fits.any(axis=1), jnp.argmax(fits, axis=1), k - 1)

  def pick(values):
    return jnp.take_along_axis(values, chosen[:, None], axis=1)[:, 0]

  return _box_mask(pick(top), pick(left), pick(box_height), pick(box_width), height, width)
