"""Tests of cowmix_jax/strong_augment.py: the strong view equals dm-pix's operations
called directly with the same draws, and the draws have UniMatch's distributions."""

import dm_pix as pix
import jax
import numpy as np
import pytest
from scipy import stats

from cowmix_jax import strong_augment


def _direct(image: np.ndarray, draws: dict, i: int) -> np.ndarray:
  """One image's strong view, written out with dm-pix calls (no vmap, no switch)."""
  factors = np.asarray(draws["factors"][i])
  operations = {
      0: lambda x: x * factors[0],
      1: lambda x: pix.adjust_contrast(x, factors[1]),
      2: lambda x: pix.adjust_saturation(x, factors[2]),
      3: lambda x: pix.adjust_hue(x, factors[3]),
  }
  if bool(draws["jitter"][i]):
    for index in np.asarray(draws["order"][i]):
      image = np.clip(np.asarray(operations[int(index)](image)), 0, 1)
  if bool(draws["grey"][i]):
    image = np.asarray(pix.rgb_to_grayscale(image, keep_dims=True))  # 3 equal channels
  if bool(draws["blur"][i]):
    image = np.asarray(pix.gaussian_blur(image, float(draws["sigma"][i]),
                                         strong_augment.BLUR_KERNEL_SIZE))
  return image


def test_the_strong_view_is_dm_pix_applied_with_the_same_draws():
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
  """Hand-worked: greyscale gives equal channels (rec601 luma); a blur keeps a constant
  image constant away from the zero-padded border and spreads a single bright pixel."""
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
