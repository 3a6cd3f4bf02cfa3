"""Tests of cowmix_jax/mixing.py: each perturbation against a direct numpy version."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cowmix_jax import mixing


def _perturbation(config, method):
  config.method = method
  return mixing.make_perturbation(config)


def _images(n=4, size=32, seed=0):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def test_partners_are_a_derangement():
  for seed in range(20):
    partner = np.asarray(mixing.sample_partners(jax.random.PRNGKey(seed), 5))
    assert sorted(partner) == list(range(5))
    assert np.all(partner != np.arange(5))


def test_partners_need_two_images():
  with pytest.raises(ValueError, match="at least 2 unlabelled images per device"):
    mixing.sample_partners(jax.random.PRNGKey(0), 1)


@pytest.mark.parametrize("method", ["cowmix", "cutmix", "ict"])
def test_mix_methods_mix_inputs_and_targets_identically(method, tiny_config):
  perturbation = _perturbation(tiny_config, method)
  images = _images()
  draws = perturbation.sample(jax.random.PRNGKey(1), jnp.asarray(images))
  mask, partner = np.asarray(draws["mask"]), np.asarray(draws["partner"])
  teacher_input, student_input = perturbation.inputs(jnp.asarray(images), draws)
  np.testing.assert_array_equal(teacher_input, images)
  for i in range(len(images)):
    expected = (1 - mask[i, ..., None]) * images[i] + mask[i, ..., None] * images[partner[i]]
    np.testing.assert_allclose(student_input[i], expected, rtol=1e-6, atol=1e-6)
  probs = jax.nn.softmax(jnp.asarray(_images(seed=1)))
  target, loss_mask = perturbation.target(probs, draws)
  np.testing.assert_allclose(target, mixing.mix(probs, probs[partner], mask), rtol=1e-6)
  np.testing.assert_array_equal(loss_mask, np.ones(images.shape[:3]))
  if method == "ict":  # a constant mask per image, 1 - lambda
    assert np.allclose(mask, mask[:, :1, :1])
  else:
    assert set(np.unique(mask)) == {0.0, 1.0}


@pytest.mark.parametrize("method", ["cowout", "cutout"])
def test_out_methods_zero_the_masked_pixels_and_restrict_the_loss(method, tiny_config):
  perturbation = _perturbation(tiny_config, method)
  images = _images()
  draws = perturbation.sample(jax.random.PRNGKey(2), jnp.asarray(images))
  mask = np.asarray(draws["mask"])
  _, student_input = perturbation.inputs(jnp.asarray(images), draws)
  np.testing.assert_array_equal(student_input, images * mask[..., None])
  probs = jax.nn.softmax(jnp.asarray(images))
  target, loss_mask = perturbation.target(probs, draws)
  np.testing.assert_array_equal(target, probs)
  np.testing.assert_array_equal(loss_mask, mask)


def test_warp_matches_scipy_affine_transform():
  image = _images(1, 24)[0]
  matrix = mixing.sampling_matrix(0.3, 1.1, True, jnp.array([1.5, -2.0]), (24, 24))
  warped, inside = mixing.warp(jnp.asarray(image), matrix)
  matrix = np.asarray(matrix, np.float64)
  inner = ndimage.binary_erosion(np.asarray(inside) > 0)  # scipy treats edge taps differently
  for c in range(3):
    expected = ndimage.affine_transform(image[..., c], matrix[:2, :2], offset=matrix[:2, 2],
                                        order=1, mode="constant", cval=0.0)
    np.testing.assert_allclose(np.asarray(warped[..., c])[inner], expected[inner], atol=1e-4)
  assert 0.5 < float(inside.mean()) < 1.0


def test_identity_warp_is_identity():
  image = _images(1, 16)[0]
  identity = mixing.sampling_matrix(0.0, 1.0, False, jnp.zeros(2), (16, 16))
  warped, inside = mixing.warp(jnp.asarray(image), identity)
  np.testing.assert_allclose(warped, image, atol=1e-5)
  assert float(inside.min()) == 1.0


def test_aug_target_is_aligned_with_the_student_view(tiny_config):
  """A per-pixel 'teacher' (the identity) warped by the target map must reproduce the
  student's own view wherever the loss applies: the geometry is undone correctly."""
  tiny_config.aug_consistency.brightness_std = 0.0
  tiny_config.aug_consistency.contrast_log_std = 0.0
  size = 48
  rows, cols = np.mgrid[0:size, 0:size] / size
  smooth = np.stack([np.sin(3 * rows), np.cos(2 * cols), rows * cols], -1)
  images = jnp.asarray(np.stack([smooth, smooth[::-1]]).astype(np.float32))
  perturbation = _perturbation(tiny_config, "aug")
  draws = perturbation.sample(jax.random.PRNGKey(3), images)
  teacher_input, student_input = perturbation.inputs(images, draws)
  assert float(jnp.abs(teacher_input - student_input).mean()) > 0.01, "views must differ"
  target, loss_mask = perturbation.target(teacher_input, draws)
  loss_mask = np.asarray(loss_mask)
  assert loss_mask.mean() > 0.5
  # Erode the valid region by a pixel: bilinear taps at its edge blend in zeros.
  interior = ndimage.binary_erosion(loss_mask > 0, iterations=2, structure=np.ones((1, 3, 3)))
  error = np.abs(np.asarray(target) - np.asarray(student_input))[interior]
  assert error.max() < 0.02, error.max()


def test_unknown_method_lists_choices():
  with pytest.raises(ValueError, match="cowmix"):
    mixing.PERTURBATIONS.get("mixup")

