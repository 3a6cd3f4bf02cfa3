"""Tests of cowmix_jax/strong_augment.py: the strong view equals dm-pix's operations
called directly with the same draws (the blur: scipy's, border repeated as PIL's), and
the draws have UniMatch's distributions."""

import dm_pix as pix
import jax
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage, stats

from cowmix_jax import strong_augment


def _pil_enhance(image: np.ndarray, enhancer, factor: float) -> np.ndarray:
  """PIL's ImageEnhance (what torchvision's ColorJitter runs on UniMatch's PIL images)
  on a [0, 1] float image, back in [0, 1]: exact to its uint8 rounding."""
  pil = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
  return np.asarray(enhancer(pil).enhance(float(factor)), np.float32) / 255


def _luma(image: np.ndarray) -> np.ndarray:
  """Rec601 grey level ``[H, W]`` (dm-pix's weights; PIL's "L" conversion rounds them)."""
  return image @ np.array([0.2989, 0.5870, 0.1140], np.float32)


def _direct(image: np.ndarray, draws: dict, i: int) -> np.ndarray:
  """One image's strong view, written out with numpy for PIL's contrast and saturation
  blends (checked against PIL below) and dm-pix's hue, greyscale and blur (no vmap, no
  switch)."""
  factors = np.asarray(draws["factors"][i])
  operations = {
      0: lambda x: x * factors[0],
      1: lambda x: _luma(x).mean() + factors[1] * (x - _luma(x).mean()),
      2: lambda x: _luma(x)[..., None] + factors[2] * (x - _luma(x)[..., None]),
      3: lambda x: pix.adjust_hue(x, factors[3]),
  }
  if bool(draws["jitter"][i]):
    for index in np.asarray(draws["order"][i]):
      image = np.clip(np.asarray(operations[int(index)](image)), 0, 1)
  if bool(draws["grey"][i]):
    image = np.asarray(pix.rgb_to_grayscale(image, keep_dims=True))  # 3 equal channels
  if bool(draws["blur"][i]):
    image = _scipy_blur(image, float(draws["sigma"][i]), strong_augment.BLUR_KERNEL_SIZE)
  return image


def _scipy_blur(image: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
  """scipy's Gaussian filter of ``[H, W, C]`` over a ``kernel_size``-tap kernel, the
  border pixels repeated outwards (``nearest``), as PIL's GaussianBlur does."""
  half = kernel_size // 2
  return ndimage.gaussian_filter(image.astype(np.float64), sigma=(sigma, sigma, 0),
                                 radius=(half, half, 0), mode="nearest")


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.3, 1.5])
def test_contrast_and_saturation_are_pils_enhancers(factor):
  """Against PIL's ImageEnhance.Contrast and .Color, which torchvision's ColorJitter
  runs on UniMatch's PIL images (uint8: equal to its rounding), and not dm-pix's
  HSV saturation (which differs by much more)."""
  image = np.random.default_rng(1).integers(0, 256, (13, 17, 3)).astype(np.uint8)
  x = image.astype(np.float32) / 255
  for ours, enhancer in ((strong_augment.adjust_contrast, ImageEnhance.Contrast),
                         (strong_augment.adjust_saturation, ImageEnhance.Color)):
    expected = _pil_enhance(x, enhancer, factor)
    np.testing.assert_allclose(np.clip(np.asarray(ours(x, factor)), 0, 1), expected,
                               atol=1.5 / 255)
  hsv = np.asarray(pix.adjust_saturation(x, factor))
  assert np.abs(hsv - _pil_enhance(x, ImageEnhance.Color, factor)).max() > 10 / 255


def test_the_strong_view_equals_its_operations_applied_directly_with_the_same_draws():
  n = 24
  images = np.random.default_rng(0).uniform(size=(n, 9, 11, 3)).astype(np.float32)
  draws = strong_augment.sample(jax.random.PRNGKey(3), n)
  # Every branch is taken by some image of this draw (so each path is compared).
  for flag in ("jitter", "grey", "blur"):
    assert 0 < int(np.sum(draws[flag])) < n
  out = np.asarray(jax.jit(strong_augment.apply)(images, draws))
  for i in range(n):
    np.testing.assert_allclose(out[i], _direct(images[i], draws, i), atol=1e-5)
  assert out.min() >= 0 and out.max() <= 1


def test_the_draws_follow_unimatch_s_distributions():
  n = 40_000
  draws = jax.tree.map(np.asarray, strong_augment.sample(jax.random.PRNGKey(7), n))
  for flag, p in (("jitter", 0.8), ("grey", 0.2), ("blur", 0.5)):
    assert abs(draws[flag].mean() - p) < 5 * np.sqrt(p * (1 - p) / n), flag
  for column, (low, high) in enumerate([(0.5, 1.5), (0.5, 1.5), (0.5, 1.5), (-0.25, 0.25)]):
    assert stats.kstest(draws["factors"][:, column], stats.uniform(low, high - low).cdf
                        ).pvalue > 1e-3, strong_augment.OPERATIONS[column]
  assert stats.kstest(draws["sigma"], stats.uniform(0.1, 1.9).cdf).pvalue > 1e-3
  # Every order is a permutation of the four operations, the 24 equally likely.
  assert (np.sort(draws["order"], axis=1) == np.arange(4)).all()
  codes = draws["order"] @ np.array([64, 16, 4, 1])
  counts = np.unique(codes, return_counts=True)[1]
  assert len(counts) == 24 and stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("step", ["grey", "blur"])
def test_each_step_alone_does_what_it_says(step):
  """Hand-worked: greyscale gives equal channels (rec601 luma); a blur spreads a single
  bright pixel and keeps a constant image constant up to its border, as PIL's
  GaussianBlur, UniMatch's, does (a zero-padded blur would darken the border)."""
  n = 1
  draws = {"jitter": np.zeros(n, bool), "factors": np.ones((n, 4), np.float32),
           "order": np.tile(np.arange(4, dtype=np.int32), (n, 1)),
           "grey": np.array([step == "grey"]), "blur": np.array([step == "blur"]),
           "sigma": np.array([1.0], np.float32)}
  image = np.zeros((1, 21, 21, 3), np.float32)
  image[0, 10, 10] = [1.0, 0.5, 0.0]
  out = np.asarray(strong_augment.apply(image, draws))[0]
  if step == "grey":
    luma = 0.2989 * 1.0 + 0.5870 * 0.5  # dm-pix's rec601 weights
    np.testing.assert_allclose(out[10, 10], [luma] * 3, rtol=1e-4)
    assert out.sum() == pytest.approx(3 * luma, rel=1e-4)
  else:
    taps = np.exp(-np.arange(-6, 7) ** 2 / 2.0)  # sigma 1 over the 13-pixel kernel
    centre = 1.0 / taps.sum()  # the 1-D kernel's middle weight; the 2-D one is its square
    assert out[10, 10, 0] == pytest.approx(centre ** 2, rel=1e-5)
    assert out[10, 11, 0] == pytest.approx(centre * taps[7] / taps.sum(), rel=1e-5)
    assert out[..., 0].sum() == pytest.approx(1.0, rel=1e-5)  # the blur keeps the mass
    constant = np.full((1, 9, 11, 3), 0.8, np.float32)
    np.testing.assert_allclose(strong_augment.apply(constant, draws), constant, rtol=1e-6)
    pil = np.asarray(Image.fromarray(np.full((9, 11, 3), 204, np.uint8)).filter(
        ImageFilter.GaussianBlur(1.0)))
    assert (pil == 204).all()  # PIL's border, for comparison


def test_a_configured_blur_range_is_drawn_from_and_blurred_with_a_kernel_wide_enough():
  """sigma ~ U(low, high) for a given range, and the strong view with the range's own
  kernel (3 sigma each side of its largest sigma) equals scipy's blur with that kernel
  and the border repeated outwards; the key's other draws are those of the default
  range."""
  n, low, high = 40_000, 0.025, 0.5
  draws = jax.tree.map(np.asarray, strong_augment.sample(jax.random.PRNGKey(7), n, (low, high)))
  assert stats.kstest(draws["sigma"], stats.uniform(low, high - low).cdf).pvalue > 1e-3
  assert draws["sigma"].min() >= low and draws["sigma"].max() <= high
  default = jax.tree.map(np.asarray, strong_augment.sample(jax.random.PRNGKey(7), n))
  for name in ("jitter", "factors", "order", "grey", "blur"):
    np.testing.assert_array_equal(draws[name], default[name])
  assert strong_augment.blur_kernel_size(high) == 5  # ceil(1.5) = 2 each side
  assert strong_augment.blur_kernel_size(2.0) == strong_augment.BLUR_KERNEL_SIZE == 13
  blur_only = {"jitter": np.zeros(1, bool), "factors": np.ones((1, 4), np.float32),
               "order": np.tile(np.arange(4, dtype=np.int32), (1, 1)),
               "grey": np.zeros(1, bool), "blur": np.ones(1, bool),
               "sigma": np.array([high], np.float32)}
  image = np.random.default_rng(2).uniform(size=(1, 9, 11, 3)).astype(np.float32)
  out = np.asarray(strong_augment.apply(image, blur_only, strong_augment.blur_kernel_size(high)))
  np.testing.assert_allclose(out[0], _scipy_blur(image[0], high, 5), atol=1e-6)
  # By hand: sigma 0.5 over 5 taps, a pixel away from the border.
  taps = np.exp(-np.arange(-2, 3) ** 2 / (2 * high ** 2))
  taps /= taps.sum()
  by_hand = np.einsum("i,j,ijc->c", taps, taps, image[0, 2:7, 3:8])
  np.testing.assert_allclose(out[0, 4, 5], by_hand, rtol=1e-5)


@pytest.mark.parametrize("bad", [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0), (1.0,), "x"])
def test_a_bad_blur_range_is_refused_naming_the_key(bad):
  with pytest.raises(ValueError, match=r"config.strong_blur_sigma_range=.*0 < low <= high"):
    strong_augment.check_blur_sigma_range(bad)
