"""Tests of cowmix_jax/metrics.py against numpy and a hand-worked example."""

import jax.numpy as jnp
import numpy as np

from cowmix_jax import metrics


def test_confusion_matrix_matches_numpy_bincount():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, size=(3, 7, 9))
  labels[rng.random(labels.shape) < 0.2] = 255
  predictions = rng.integers(0, 5, size=labels.shape)
  valid = labels != 255
  expected = np.bincount(5 * labels[valid] + predictions[valid], minlength=25).reshape(5, 5)
  got = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions), 5)
  np.testing.assert_array_equal(got, expected)


def test_iou_hand_worked_example():
  # Class 0: TP 3, FN 1 (predicted 1), FP 2 (true 1 predicted 0) -> 3 / 6.
  # Class 1: TP 4, FN 2, FP 1 -> 4 / 7. Class 2: never present -> NaN, excluded.
  confusion = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])
  iou = metrics.per_class_iou(confusion)
  np.testing.assert_allclose(iou[:2], [3 / 6, 4 / 7])
  assert np.isnan(iou[2])
  np.testing.assert_allclose(metrics.mean_iou(confusion), (3 / 6 + 4 / 7) / 2)


def test_class_shares_count_labels_and_predictions_separately():
  labels = np.array([[0, 0, 1, 1], [2, 255, 0, 1]])
  predictions = np.array([[0, 1, 1, 1], [1, 2, 0, 0]])
  confusion = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(predictions), 3)
  true_share, predicted_share = metrics.class_shares(confusion)
  # 7 scored pixels (one ignored): labels 0,0,1,1,2,0,1; predictions 0,1,1,1,1,0,0.
  np.testing.assert_allclose(true_share, [3 / 7, 3 / 7, 1 / 7])
  np.testing.assert_allclose(predicted_share, [3 / 7, 4 / 7, 0])


def test_iou_accumulated_over_split_differs_from_mean_over_images():
  """The paper accumulates counts over the split before dividing."""
  image_a = metrics.confusion_matrix(jnp.array([[[0, 0, 1]]]), jnp.array([[[0, 1, 1]]]), 2)
  image_b = metrics.confusion_matrix(jnp.array([[[1, 1, 1]]]), jnp.array([[[1, 1, 1]]]), 2)
  total = np.asarray(image_a) + np.asarray(image_b)
  # Class 0: 1 / 2; class 1: 4 / 5.
  np.testing.assert_allclose(metrics.mean_iou(total), (1 / 2 + 4 / 5) / 2)
  per_image = (metrics.mean_iou(np.asarray(image_a)) + metrics.mean_iou(np.asarray(image_b))) / 2
  assert abs(per_image - metrics.mean_iou(total)) > 0.05
