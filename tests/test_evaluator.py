"""The evaluation path's accumulation (the scoring itself is checked in test_evaluate)."""

import jax.numpy as jnp
import numpy as np

from cowmix_jax import evaluator, sharding


def test_the_split_confusion_is_summed_in_int64_past_two_to_the_31_pixels():
  """Before: the device accumulator was int32, so a cell past 2^31 - 1 pixels (a large
  validation set of one's own) wrapped around to a negative count."""
  per_batch = np.array([[2**30 + 7, 5], [0, 2**30]], np.int64)
  num_batches = 3
  scorer = evaluator.Evaluator.__new__(evaluator.Evaluator)
  scorer.mesh, scorer.num_classes = sharding.make_mesh(1), 2
  batch = {"image": np.zeros((1, 4, 4, 3), np.float32), "label": np.zeros((1, 4, 4), np.uint8)}
  scorer.batches = lambda: [batch] * num_batches
  scorer._predict = lambda variables, images, labels: (
      jnp.zeros(labels.shape, jnp.int32), jnp.asarray(per_batch, jnp.int32))
  confusion = scorer.confusion({})
  assert confusion.dtype == np.int64
  expected = [[3 * (2**30 + 7), 15], [0, 3 * 2**30]]  # Python integers: exact
  assert confusion.tolist() == expected and expected[0][0] > 2**31
