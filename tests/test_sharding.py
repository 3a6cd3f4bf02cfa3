"""Tests of cowmix_jax/sharding.py: the mesh placements and the prefetch queue."""

import jax
import numpy as np
import pytest

from cowmix_jax import sharding


class CountingBatches:
  """An iterator of ``count`` numbered host batches that records how many were read."""

  def __init__(self, count: int, rows: int = 8):
    self.count, self.rows, self.read = count, rows, 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.read == self.count:
      raise StopIteration
    self.read += 1
    return {"image": np.full((self.rows, 4, 4, 3), self.read, np.float32),
            "label": np.arange(self.rows * 16, dtype=np.int32).reshape(self.rows, 4, 4)}


@pytest.mark.parametrize("size", [0, 1, 2, 3])
def test_prefetch_hands_out_every_batch_in_order_sharded_over_the_mesh(size):
  mesh = sharding.make_mesh()
  pairs = list(sharding.prefetch_to_mesh(CountingBatches(5), mesh, size))
  assert len(pairs) == 5
  for number, (host, device) in enumerate(pairs, start=1):
    assert float(host["image"][0, 0, 0, 0]) == number
    for key in host:
      np.testing.assert_array_equal(np.asarray(device[key]), host[key])
      assert device[key].sharding.is_equivalent_to(sharding.batch_sharded(mesh), host[key].ndim)
    # Each device holds its own rows of the batch.
    shards = device["image"].addressable_shards
    assert len(shards) == jax.device_count() == 8
    assert {shard.data.shape[0] for shard in shards} == {1}


@pytest.mark.parametrize("size, ahead", [(0, 1), (1, 1), (2, 2), (4, 4)])
def test_prefetch_reads_exactly_size_batches_ahead(size, ahead):
  """When the first batch is handed out, ``size`` (at least 1) have been transferred."""
  batches = CountingBatches(10)
  prefetched = sharding.prefetch_to_mesh(batches, sharding.make_mesh(), size)
  assert batches.read == 0  # nothing is read before the first batch is asked for
  next(prefetched)
  assert batches.read == ahead
  next(prefetched)
  assert batches.read == ahead + 1


def test_a_negative_prefetch_size_names_the_key():
  with pytest.raises(ValueError, match=r"config.prefetch_batches=-1: expected 0 or more"):
    next(sharding.prefetch_to_mesh(CountingBatches(2), sharding.make_mesh(), -1))
