"""Tests of cowmix_jax/masks.py against scipy and hand-checkable properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage, stats

from cowmix_jax import masks


def _boundary_changes(m: np.ndarray) -> int:
  """Number of neighbouring pixel pairs (horizontal and vertical) with different values."""
  return int(np.sum(m[:, 1:, :] != m[:, :-1, :]) + np.sum(m[:, :, 1:] != m[:, :, :-1]))


def test_fft_blur_matches_scipy_away_from_border():
  noise = np.random.default_rng(0).normal(size=(2, 96, 80)).astype(np.float32)
  sigmas = np.array([2.0, 3.5], np.float32)
  blurred = np.asarray(masks.gaussian_blur_fft(jnp.asarray(noise), jnp.asarray(sigmas)))
  for i, sigma in enumerate(sigmas):
    reference = ndimage.gaussian_filter(noise[i].astype(np.float64), float(sigma), truncate=6.0)
    margin = int(np.ceil(6 * sigma)) + 1
    inner = (slice(margin, -margin),) * 2
    np.testing.assert_allclose(blurred[i][inner], reference[inner], atol=2e-4)
    # The border differs (circular vs reflecting boundaries), so the check is not vacuous.
    assert np.max(np.abs(blurred[i] - reference)) > 1e-3


def test_cow_mask_mean_proportion_is_p():
  m = np.asarray(masks.cow_masks(jax.random.PRNGKey(0), (256, 128, 128), (4.0, 16.0), (0.5, 0.5)))
  assert m.dtype == np.float32 and m.shape == (256, 128, 128)
  assert set(np.unique(m)) <= {0.0, 1.0}
  assert abs(m.mean() - 0.5) < 0.01


def test_cow_mask_proportions_follow_p():
  """The proportion of ones tracks p: a low p gives few ones, a high p many."""
  for p in (0.1, 0.3, 0.7, 0.9):
    m = np.asarray(masks.cow_masks(jax.random.PRNGKey(1), (64, 128, 128), (4.0, 16.0), (p, p)))
    assert abs(m.mean() - p) < 0.02, p


def test_cow_mask_uniform_p_spreads_over_unit_interval():
  m = np.asarray(masks.cow_masks(jax.random.PRNGKey(2), (256, 64, 64), (4.0, 16.0), (0.0, 1.0)))
  proportions = m.mean(axis=(1, 2))
  histogram, _ = np.histogram(proportions, bins=10, range=(0, 1))
  assert np.all(histogram > 0), histogram
  assert proportions.min() < 0.05 and proportions.max() > 0.95


def test_exact_proportion_gives_exact_counts():
  for p in (0.0, 0.3, 0.5, 1.0):
    m = np.asarray(masks.cow_masks(jax.random.PRNGKey(3), (16, 40, 56), (2.0, 8.0), (p, p),
                                   exact_proportion=True))
    np.testing.assert_array_equal(m.sum(axis=(1, 2)), np.full(16, round(p * 40 * 56)))


def test_larger_sigma_gives_larger_blobs():
  changes = []
  for sigma in (2.0, 4.0, 8.0, 16.0):
    m = np.asarray(masks.cow_masks(jax.random.PRNGKey(4), (32, 128, 128), (sigma, sigma),
                                   (0.5, 0.5)))
    changes.append(_boundary_changes(m))
  assert all(a > b for a, b in zip(changes, changes[1:])), changes


def test_cow_masks_same_key_same_masks_different_key_different():
  shape, sigma, p = (4, 32, 32), (2.0, 8.0), (0.5, 0.5)
  a = masks.cow_masks(jax.random.PRNGKey(5), shape, sigma, p)
  b = masks.cow_masks(jax.random.PRNGKey(5), shape, sigma, p)
  c = masks.cow_masks(jax.random.PRNGKey(6), shape, sigma, p)
  np.testing.assert_array_equal(a, b)
  assert np.mean(np.asarray(a) != np.asarray(c)) > 0.2
  # Masks within one batch differ from each other too.
  assert np.mean(np.asarray(a[0]) != np.asarray(a[1])) > 0.2


def test_cow_masks_jit_matches_eager():
  fn = jax.jit(masks.cow_masks, static_argnums=(1, 2, 3))
  key = jax.random.PRNGKey(7)
  np.testing.assert_array_equal(fn(key, (3, 32, 32), (2.0, 8.0), (0.5, 0.5)),
                                masks.cow_masks(key, (3, 32, 32), (2.0, 8.0), (0.5, 0.5)))


@pytest.mark.parametrize("bad", [(-0.1, 0.5), (0.6, 0.5), (0.5, 1.2)])
def test_bad_p_range_is_rejected(bad):
  with pytest.raises(ValueError, match="p_range"):
    masks.cow_masks(jax.random.PRNGKey(0), (1, 32, 32), (2.0, 4.0), bad)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.75, 0.9])
def test_box_masks_are_rectangles_of_the_requested_area(p):
  height, width = 128, 96
  m = np.asarray(masks.box_masks(jax.random.PRNGKey(8), (64, height, width), (p, p)))
  assert m.shape == (64, height, width) and m.dtype == np.float32
  for mask in m:
    rows, cols = np.nonzero(mask)
    box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert box_area == mask.sum(), "ones must form one filled rectangle"
    assert abs(mask.sum() - p * height * width) <= 0.02 * p * height * width
  # The aspect ratio is random: heights of the boxes vary.
  heights = [np.ptp(np.nonzero(mask)[0]) for mask in m]
  assert len(set(heights)) >= 5


def test_box_masks_reach_every_edge_and_stay_inside():
  m = np.asarray(masks.box_masks(jax.random.PRNGKey(9), (512, 32, 32), (0.1, 0.1)))
  assert m[:, 0, :].any() and m[:, -1, :].any() and m[:, :, 0].any() and m[:, :, -1].any()
  # Every box is whole (inside the image): its area matches the request.
  np.testing.assert_allclose(m.sum(axis=(1, 2)), 0.1 * 32 * 32, rtol=0.1)


def _box_parameters(m: np.ndarray) -> tuple[np.ndarray, ...]:
  """``(top, left, height, width)`` of each one-rectangle mask of ``[N, H, W]``."""
  rows, cols = m.any(axis=2), m.any(axis=1)
  top, left = rows.argmax(axis=1), cols.argmax(axis=1)
  return top, left, rows.sum(axis=1), cols.sum(axis=1)


def test_random_area_box_masks_draw_all_four_parameters_as_worked_out_by_hand():
  """CutMix as section 3.3 says (``cutmix_random_area``: the area drawn as CutOut's):
  area fraction p ~ U(0, 1); height fraction p^u with u ~ U(0, 1), so that
  E[h / H] = E[(1 - p) / -ln p] = integral_0^1 (1 - p) / -ln p dp = ln 2, and the width
  fraction p^(1 - u) likewise; top ~ U{0, ..., H - h} and left ~ U{0, ..., W - w}, so the
  box's centre lies at H / 2, W / 2 on average and top / (H - h) is uniform on [0, 1]."""
  n, height, width = 6000, 45, 60
  m = np.asarray(masks.box_masks(jax.random.PRNGKey(35), (n, height, width), (0.0, 1.0)))
  nonempty = m.any(axis=(1, 2))
  assert nonempty.mean() > 0.99  # an area below one pixel rounds to an empty box
  top, left, box_h, box_w = _box_parameters(m[nonempty])
  np.testing.assert_array_equal(m[nonempty].sum(axis=(1, 2)), box_h * box_w)  # filled
  area = m.sum(axis=(1, 2)) / (height * width)
  assert stats.kstest(area, "uniform").statistic < 0.03
  assert abs(np.mean(box_h / height) - np.log(2)) < 0.015
  assert abs(np.mean(box_w / width) - np.log(2)) < 0.015
  # The height fraction is not tied to the area alone: at one area it still varies.
  middle = (area > 0.2) & (area < 0.3)
  assert np.ptp((box_h / height)[middle[nonempty]]) > 0.4
  free_h, free_w = height - box_h, width - box_w
  assert abs(np.mean(top + box_h / 2) / height - 0.5) < 0.01
  assert abs(np.mean(left + box_w / 2) / width - 0.5) < 0.01
  # top is uniform on {0, ..., H - h} exactly when (top + v) / (H - h + 1), v ~ U(0, 1),
  # is uniform on [0, 1] (the randomised probability integral transform).
  jitter = np.random.default_rng(0).uniform(size=top.shape)
  assert stats.kstest((top + jitter) / (free_h + 1), "uniform").statistic < 0.03
  assert stats.kstest((left + jitter) / (free_w + 1), "uniform").statistic < 0.03
  assert np.all(top + box_h <= height) and np.all(left + box_w <= width)


def test_fft_friendly_size():
  assert masks.fft_friendly_size(321) == 324
  assert masks.fft_friendly_size(64) == 64
  assert masks.fft_friendly_size(97) == 100


@pytest.mark.parametrize("shape", [(400, 64, 96), (400, 45, 50)])
def test_blurred_noise_has_the_covariance_of_blurred_white_noise(shape):
  """Theory for unit white noise blurred by a Gaussian of width s: variance 1/(4 pi s^2),
  correlation exp(-d^2 / (4 s^2)) at lag d; the same at the border as inside."""
  sigma = 3.0
  field = np.asarray(masks.blurred_noise(jax.random.PRNGKey(0), shape,
                                         jnp.full(shape[0], sigma), sigma_min=sigma), np.float64)
  variance = 1 / (4 * np.pi * sigma**2)
  np.testing.assert_allclose(field.var(), variance, rtol=0.05)
  np.testing.assert_allclose(field.mean(), 0.0, atol=0.05 * np.sqrt(variance))
  for lag in (3, 6):
    for axis in (1, 2):
      a = np.take(field, np.arange(shape[axis] - lag), axis=axis)
      b = np.take(field, np.arange(lag, shape[axis]), axis=axis)
      correlation = np.mean(a * b) / variance
      assert abs(correlation - np.exp(-lag**2 / (4 * sigma**2))) < 0.03, (lag, axis, correlation)
  border = np.concatenate([field[:, :2].ravel(), field[:, -2:].ravel(),
                           field[:, :, :2].ravel(), field[:, :, -2:].ravel()])
  np.testing.assert_allclose(border.var(), variance, rtol=0.08)


def test_cow_masks_do_not_wrap_around_the_image_edges():
  """Opposite edges of a mask are far apart, so they agree about as often as two
  independent pixels (1/2 at p = 1/2: 1/2 + arcsin(rho) / pi with rho the field's
  correlation across the image, 0.004 here); a canvas the size of the image makes them
  neighbours (the periodic field below agrees in about 80% of pixels)."""
  shape, sigma_range = (1000, 48, 64), (4.0, 16.0)
  m = np.asarray(masks.cow_masks(jax.random.PRNGKey(9), shape, sigma_range, (0.5, 0.5)))
  left_right = np.mean(m[:, :, 0] == m[:, :, -1])
  top_bottom = np.mean(m[:, 0, :] == m[:, -1, :])
  assert abs(left_right - 0.5) < 0.03 and abs(top_bottom - 0.5) < 0.03, (left_right, top_bottom)
  # Without the margin (config.mask.cow_canvas_margin_sigmas=0, the masks of earlier
  # versions) the field is periodic, so opposite edges are neighbours.
  periodic = np.asarray(masks.cow_masks(jax.random.PRNGKey(9), shape, sigma_range, (0.5, 0.5),
                                        canvas_margin_sigmas=0.0))
  assert np.mean(periodic[:, :, 0] == periodic[:, :, -1]) > 0.75
  assert np.mean(periodic[:, 0, :] == periodic[:, -1, :]) > 0.75


def test_blurred_noise_band_matches_full_spectrum_sampling():
  """Sampling only the band changes nothing beyond the cutoff: the per-mask spectra
  of band-limited fields vanish outside the band."""
  sigma = 8.0
  field = np.asarray(masks.blurred_noise(jax.random.PRNGKey(1), (4, 100, 100),
                                         jnp.full(4, sigma), sigma_min=sigma))
  spectrum = np.abs(np.fft.rfft2(field))
  freq = np.sqrt(np.fft.fftfreq(100)[:, None] ** 2 + np.fft.rfftfreq(100)[None, :] ** 2)
  outside = freq > 0.2
  assert spectrum[:, outside].max() < 1e-4 * spectrum.max()


@pytest.mark.parametrize("canvas, image, rows, num_cols", [
    ((72, 72), (45, 50), np.r_[0:12, 62:72], 12),   # a narrow band of a square canvas
    ((40, 45), (33, 40), np.arange(40), 23),        # every row and column (odd width)
    ((30, 48), (30, 48), np.arange(30), 25),        # even width: the Nyquist column too
])
def test_partial_inverse_dft_and_cropped_fft_equal_numpy_irfft2(canvas, image, rows,
                                                                num_cols):
  """Both ways from a band of rfft2 coefficients to the cropped real field equal numpy's
  irfft2 of the zero-filled spectrum (Hermitian or not in columns 0 and Nyquist: irfft2
  ignores what is left there, and so must they)."""
  canvas_h, canvas_w = canvas
  height, width = image
  rng = np.random.default_rng(0)
  band = (rng.standard_normal((2, len(rows), num_cols)) +
          1j * rng.standard_normal((2, len(rows), num_cols))).astype(np.complex64)
  spectrum = np.zeros((2, canvas_h, canvas_w // 2 + 1), np.complex128)
  spectrum[:, rows, :num_cols] = band
  expected = np.fft.irfft2(spectrum, s=canvas)[:, :height, :width]
  scale = np.abs(expected).max()
  for route in (masks.cropped_inverse_fft, masks.partial_inverse_dft):
    field = np.asarray(route(jnp.asarray(band), rows, canvas_h, canvas_w, height, width))
    assert field.shape == (2, height, width)
    np.testing.assert_allclose(field, expected, atol=2e-6 * scale, err_msg=route.__name__)


def test_cow_masks_take_the_cheaper_route_by_the_band_width():
  """Wide blurs have a narrow band: the partial DFT (Pascal: sigma 8..32 at 321 px);
  narrow blurs on a small canvas: the FFT."""
  def route(size, sigma_range):
    margin = masks.canvas_margin(sigma_range[1])
    canvas = masks.fft_friendly_size(size + margin)
    top = np.sqrt(np.log(1 / masks.SPECTRUM_CUTOFF) / (2 * np.pi**2 * sigma_range[0]**2))
    rows = masks._band_rows(canvas, top)
    cols = min(int(np.ceil(top * canvas)), canvas // 2) + 1
    return masks.partial_dft_is_cheaper(len(rows), cols, canvas, canvas, size, size)

  assert route(321, (8.0, 32.0))
  assert not route(64, (1.0, 4.0))


def _unimatch_box(rng, height, width, area_range=(0.02, 0.4), aspect_range=(0.3, 1 / 0.3)):
  """UniMatch's obtain_cutmix_box (dataset/transform.py) transcribed with numpy for a
  height x width image: the area drawn once, the rest redrawn until the box fits.
  Returns (top, left, h, w)."""
  area = rng.uniform(*area_range) * height * width
  while True:
    ratio = rng.uniform(*aspect_range)
    box_width, box_height = int(np.sqrt(area / ratio)), int(np.sqrt(area * ratio))
    left, top = rng.integers(0, width), rng.integers(0, height)
    if left + box_width <= width and top + box_height <= height:
      return top, left, box_height, box_width


def _box_extent(mask):
  """(top, left, height, width) of the ones of a [H, W] rectangle mask."""
  rows, cols = np.nonzero(mask)
  return rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


@pytest.mark.parametrize("size", [(48, 48), (48, 80)])
def test_cutmix_boxes_follow_unimatchs_rejection_sampler(size):
  """Each mask is one full rectangle inside the image, and its top, left, height, width
  and area are distributed as those of UniMatch's redraw-until-it-fits sampler
  (two-sample Kolmogorov-Smirnov, 3,000 boxes each)."""
  n = 3000
  height, width = size
  ours = np.asarray(masks.cutmix_boxes(jax.random.PRNGKey(0), (n, height, width)))
  extents = np.array([_box_extent(m) for m in ours])
  tops, lefts, heights, widths = extents.T
  assert (ours.sum((1, 2)) == heights * widths).all()  # one solid rectangle each
  rng = np.random.default_rng(0)
  reference = np.array([_unimatch_box(rng, height, width) for _ in range(n)])
  for name, a, b in [("top", tops, reference[:, 0]), ("left", lefts, reference[:, 1]),
                     ("height", heights, reference[:, 2]), ("width", widths, reference[:, 3]),
                     ("area", heights * widths, reference[:, 2] * reference[:, 3])]:
    assert stats.ks_2samp(a, b).pvalue > 1e-3, name
  area = heights * widths / (height * width)
  assert area.min() >= 0.0 and area.max() <= 0.4


def test_cutmix_boxes_reject_bad_ranges():
  with pytest.raises(ValueError, match="aspect_range"):
    masks.cutmix_boxes(jax.random.PRNGKey(0), (2, 8, 8), aspect_range=(0.0, 1.0))
  with pytest.raises(ValueError):
    masks.cutmix_boxes(jax.random.PRNGKey(0), (2, 8, 8), area_range=(0.5, 0.2))
