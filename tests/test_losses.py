"""Tests of cowmix_jax/losses.py against direct numpy computations."""

import jax.numpy as jnp
import numpy as np
import pytest

from cowmix_jax import losses


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_cross_entropy_ignores_label_255():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 5, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(2, 4, 5))
  labels[0, :2] = 255
  valid = labels != 255
  log_probs = np.log(_softmax(logits.astype(np.float64)))
  picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  expected = -picked[valid].mean()
  got = float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_cross_entropy_all_ignored_is_zero():
  assert float(losses.cross_entropy(jnp.ones((1, 2, 2, 3)), jnp.full((1, 2, 2), 255))) == 0.0


def test_consistency_losses_match_numpy():
  rng = np.random.default_rng(1)
  student = rng.normal(size=(2, 3, 3, 4))
  target_logits = rng.normal(size=(2, 3, 3, 4))
  target = _softmax(target_logits)
  p = _softmax(student)
  np.testing.assert_allclose(
      losses.consistency_per_pixel(jnp.asarray(student), jnp.asarray(target), "mse_prob"),
      ((p - target) ** 2).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(
      losses.consistency_per_pixel(jnp.asarray(student), jnp.asarray(target), "kl"),
      (target * (np.log(target) - np.log(p))).sum(-1), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      losses.consistency_per_pixel(jnp.asarray(student), jnp.asarray(target_logits), "mse_logit"),
      ((student - target_logits) ** 2).sum(-1), rtol=1e-5)


def test_confidence_modes():
  # Two pixels confident (0.98, 0.97 exactly counts), two not.
  target = np.array([[[[0.98, 0.02], [0.97, 0.03]], [[0.6, 0.4], [0.5, 0.5]]]], np.float32)
  batch = np.asarray(losses.confidence_weight(jnp.asarray(target).max(-1), 0.97, "batch"))
  np.testing.assert_allclose(batch, np.full((1, 2, 2), 0.5))
  pixel = np.asarray(losses.confidence_weight(jnp.asarray(target).max(-1), 0.97, "pixel"))
  np.testing.assert_array_equal(pixel, [[[1, 1], [0, 0]]])
  np.testing.assert_array_equal(losses.confidence_weight(jnp.asarray(target).max(-1), 0.97, "none"),
                                np.ones((1, 2, 2)))
  with pytest.raises(ValueError, match="confidence mode"):
    losses.confidence_weight(jnp.asarray(target).max(-1), 0.97, "sometimes")


def test_masked_consistency_is_paper_listing():
  """mean(sq_diff * mask) * conf_fac, the mean over all pixels (paper listing 2)."""
  rng = np.random.default_rng(2)
  student = rng.normal(size=(2, 4, 4, 3))
  target = _softmax(rng.normal(size=(2, 4, 4, 3)) * 3)
  mask = (rng.random((2, 4, 4)) > 0.5).astype(np.float64)
  conf_fac = (target.max(-1) >= 0.97).mean()
  expected = (((_softmax(student) - target) ** 2).sum(-1) * mask).mean() * conf_fac
  weight = losses.confidence_weight(jnp.asarray(target).max(-1), 0.97, "batch")
  got = losses.masked_consistency(jnp.asarray(student), jnp.asarray(target), jnp.asarray(mask),
                                  weight)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def _unimatch_loss_numpy(logits, pseudo_labels, confidence, valid, threshold):
  """UniMatch V1's unlabelled loss, transcribed: ``criterion_u`` is a per-pixel
  cross-entropy (reduction none), multiplied by ``(conf >= thresh) & (ignore != 255)``,
  summed, divided by ``(ignore != 255).sum()``."""
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  per_pixel = -np.take_along_axis(log_probs, pseudo_labels[..., None], -1)[..., 0]
  counted = (confidence >= threshold) & (valid > 0)
  return (per_pixel * counted).sum() / (valid > 0).sum()


def test_thresholded_cross_entropy_is_unimatch_s_loss():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(3, 6, 7, 5)).astype(np.float32) * 3
  pseudo_labels = rng.integers(0, 5, size=(3, 6, 7))
  confidence = rng.uniform(0.8, 1.0, size=(3, 6, 7)).astype(np.float32)
  confidence[0, 0, :3] = 0.95  # at the threshold: counted (>=)
  valid = (rng.uniform(size=(3, 6, 7)) > 0.2).astype(np.float32)
  for threshold in (0.0, 0.95, 1.01):
    ours = float(losses.thresholded_cross_entropy(
        jnp.asarray(logits), jnp.asarray(pseudo_labels), jnp.asarray(confidence),
        jnp.asarray(valid), threshold))
    expected = _unimatch_loss_numpy(logits, pseudo_labels, confidence, valid, threshold)
    assert ours == pytest.approx(expected, rel=1e-6, abs=1e-7), threshold
  # Divided by every valid pixel, not by the confident ones: half the pixels confident
  # halves the loss of the same per-pixel errors.
  flat = np.zeros((1, 2, 2, 2), np.float32)
  labels = np.zeros((1, 2, 2), np.int32)
  ones = np.ones((1, 2, 2), np.float32)
  half = np.array([[[1.0, 1.0], [0.0, 0.0]]], np.float32)
  full_loss = losses.thresholded_cross_entropy(flat, labels, ones, ones, 0.5)
  half_loss = losses.thresholded_cross_entropy(flat, labels, half, ones, 0.5)
  assert float(full_loss) == pytest.approx(np.log(2)) and float(half_loss) == pytest.approx(
      np.log(2) / 2)
  assert float(losses.thresholded_cross_entropy(flat, labels, ones, 0 * ones, 0.5)) == 0.0


def test_hard_ce_is_cross_entropy_to_the_targets_argmax():
  """The registry's hard_ce: per pixel, -log softmax(student)[argmax(target)] (numpy)."""
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  target = rng.dirichlet(np.ones(5), size=(2, 3, 4)).astype(np.float32)
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_softmax, target.argmax(-1)[..., None], -1)[..., 0]
  ours = losses.consistency_per_pixel(jnp.asarray(logits), jnp.asarray(target), "hard_ce")
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
