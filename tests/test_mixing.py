"""Tests of cowmix_jax/mixing.py: each perturbation against a direct numpy version."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cowmix_jax import mixing, strong_augment
from cowmix_jax.normalisation import from_unit_rgb, to_unit_rgb

from conftest import make_tiny_config


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


def test_ict_confidence_mixes_the_two_teacher_confidences(tiny_config):
  """The authors' ICT code: conf = (1 - lam) * max(p_a) + lam * max(p_b), not the maximum
  of the blended prediction. Two confident predictions of different classes blended
  half and half: 0.98 each way, where the blended prediction's maximum is 0.49."""
  perturbation = _perturbation(tiny_config, "ict")
  probs = np.zeros((2, 2, 2, 3), np.float32)
  probs[0, ..., 0], probs[0, ..., 1] = 0.98, 0.02
  probs[1, ..., 2], probs[1, ..., 1] = 0.98, 0.02
  probs[1, 0, 0] = [0.5, 0.3, 0.2]  # one pixel the second teacher is unsure of
  lam = np.array([0.5, 0.25], np.float32)  # mask = 1 - lambda (ICT's blend weight)
  draws = {"mask": jnp.asarray(np.broadcast_to((1 - lam)[:, None, None], (2, 2, 2))),
           "partner": jnp.array([1, 0])}
  top = probs.max(-1)
  expected = lam[:, None, None] * top + (1 - lam[:, None, None]) * top[[1, 0]]
  got = np.asarray(perturbation.confidence(jnp.asarray(probs), draws))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got[0, 1, 1] == pytest.approx(0.98)
  blended_max = np.asarray(perturbation.target(jnp.asarray(probs), draws)[0]).max(-1)
  assert blended_max[0, 1, 1] == pytest.approx(0.49)


@pytest.mark.parametrize("method", ["cowmix", "cutmix", "cowout", "aug"])
def test_confidence_is_the_target_maximum_for_the_other_methods(method, tiny_config):
  """For a 0/1 mask, mixing the confidences is exactly the maximum of the mixed target
  (bit for bit, so CutMix and CowMix runs are unchanged); CutOut-style and augmentation
  targets keep the maximum of the target."""
  perturbation = _perturbation(tiny_config, method)
  images = _images()
  draws = perturbation.sample(jax.random.PRNGKey(5), jnp.asarray(images))
  probs = jax.nn.softmax(3 * jnp.asarray(_images(seed=2)))
  target, _ = perturbation.target(probs, draws)
  np.testing.assert_array_equal(perturbation.confidence(probs, draws),
                                np.asarray(target).max(-1))


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



def _strong_views(config, method, mix, **mask_settings):
  config.mask.mix = mix
  for key, value in mask_settings.items():
    config.mask[key] = value
  return _perturbation(config, method)


@pytest.mark.parametrize("mix", ["box", "cow"])
def test_strong_view_masks_are_applied_with_the_mix_probability(mix, tiny_config):
  """Over 4,000 views, the share of views with a mask is mix_probability (binomial, 5
  SE); drawn masks are 0/1 and of the kind asked: UniMatch boxes cover 2-40% of the
  crop, cow masks CowMix's proportion (cowmix_p_range (0.5, 0.5): 0.5 on average)."""
  perturbation = _strong_views(tiny_config, "unimatch", mix, mix_probability=0.3)
  images = np.zeros((2000, 32, 32, 3), np.float32)
  masks = np.asarray(perturbation.sample(jax.random.PRNGKey(0), images)["mask"])
  assert masks.shape == (2000, 2, 32, 32) and set(np.unique(masks)) == {0.0, 1.0}
  area = masks.mean(axis=(2, 3)).ravel()
  applied = area > 0
  assert abs(applied.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / applied.size)
  if mix == "box":
    assert area[applied].min() >= 0.01 and area[applied].max() <= 0.4
  else:
    assert abs(area[applied].mean() - 0.5) < 0.02
  # The two views of an image draw their masks independently.
  assert not np.array_equal(masks[:, 0], masks[:, 1])


def test_complementary_views_split_every_pixel_between_image_and_partner(tiny_config):
  """View 2 takes 1 - m where view 1 takes m, both always mixed: together they show
  the partner on every pixel once. One partner for both views, not the image itself."""
  perturbation = _strong_views(tiny_config, "unimatch", "cow", complementary=True)
  images = _images(n=64)
  draws = perturbation.sample(jax.random.PRNGKey(1), images)
  masks = np.asarray(draws["mask"])
  np.testing.assert_array_equal(masks[:, 0] + masks[:, 1], 1.0)
  assert (masks[:, 0].mean(axis=(1, 2)) > 0).all()
  assert (np.asarray(draws["partner"]) != np.arange(64)).all()
  _, strong = perturbation.inputs(images, draws)
  assert strong.shape == (64, 2, 32, 32, 3)


def test_strong_view_settings_that_cannot_work_name_the_key(tiny_config):
  with pytest.raises(ValueError, match="config.mask.mix='circle'"):
    _strong_views(tiny_config, "fixmatch", "circle")
  with pytest.raises(ValueError, match="config.mask.complementary.*unimatch"):
    _strong_views(make_tiny_config(), "fixmatch", "cow", complementary=True)


def test_strong_views_blur_with_the_configured_sigma_range(tiny_config):
  """config.strong_blur_sigma_range sets the views' blur: sigmas drawn within it, and a
  view equals strong_augment.apply with that range's kernel on the same draws."""
  tiny_config.strong_blur_sigma_range = (0.025, 0.5)
  perturbation = _strong_views(tiny_config, "fixmatch", "box", mix_probability=0.0)
  images = _images(n=64)
  draws = perturbation.sample(jax.random.PRNGKey(2), images)
  sigma = np.asarray(draws["colour"]["sigma"])
  assert sigma.min() >= 0.025 and sigma.max() <= 0.5 and sigma.max() > 0.4
  _, strong = perturbation.inputs(images, draws)
  normalisation = perturbation.normalisation
  colour = jax.tree.map(lambda x: x[:, 0], draws["colour"])
  unit = to_unit_rgb(images, normalisation)
  expected = from_unit_rgb(strong_augment.apply(unit, colour, 5), normalisation)
  np.testing.assert_allclose(np.asarray(strong[:, 0]), np.asarray(expected), atol=1e-5)
  # Sigmas up to 4 need 25 taps: the default kernel (13, for UniMatch's up to 2) would
  # cut their tails.
  tiny_config.strong_blur_sigma_range = (3.0, 4.0)
  perturbation = _strong_views(tiny_config, "fixmatch", "box", mix_probability=0.0)
  draws = perturbation.sample(jax.random.PRNGKey(2), images)
  _, strong = perturbation.inputs(images, draws)
  colour = jax.tree.map(lambda x: x[:, 0], draws["colour"])
  wide = from_unit_rgb(strong_augment.apply(unit, colour, 25), normalisation)
  np.testing.assert_allclose(np.asarray(strong[:, 0]), np.asarray(wide), atol=1e-5)
  cut = from_unit_rgb(strong_augment.apply(unit, colour), normalisation)
  assert not np.allclose(np.asarray(strong[:, 0]), np.asarray(cut), atol=1e-3)
