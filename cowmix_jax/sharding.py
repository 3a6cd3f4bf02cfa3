"""The 1-D ``('data',)`` device mesh and the two placements used everywhere: the train
state replicated, batches sharded along their leading axis."""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ``('data',)`` mesh over the first ``num_devices`` devices (all by default),
  in the order ``mesh_utils`` picks for the hardware's interconnect."""
  devices = jax.devices()
  if num_devices is not None:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices, only {len(devices)} are visible")
    devices = devices[:num_devices]
  return Mesh(mesh_utils.create_device_mesh((len(devices),), devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (the train state, the confusion matrix)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis split over the devices."""
  return NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch, mesh: Mesh):
  """Host batches (this process's share) -> global arrays sharded along the batch."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_mesh(host_batches: Iterable, mesh: Mesh, size: int) -> Iterator[tuple]:
  """``(host batch, device batch)`` pairs of ``host_batches``, with ``size`` batches
  transferred to the devices ahead of the one handed out (flax's ``prefetch_to_device``
  pattern, for a mesh): the transfers of the next batches overlap the step that runs on
  the current one. ``size`` 0 or 1: each batch is transferred when it is asked for.

  The batches and their order are those of ``host_batches``; ``size`` more host batches
  are read ahead, which an input that restarts from a step number (as the training input
  does on resume) does not notice.
  """
  if size < 0:
    raise ValueError(f"config.prefetch_batches={size}: expected 0 or more")
  host_batches = iter(host_batches)
  queue = collections.deque()

  def transfer(count: int) -> None:
    for host_batch in itertools.islice(host_batches, count):
      queue.append((host_batch, shard_batch(host_batch, mesh)))

  transfer(max(size, 1))
  while queue:
    yield queue.popleft()
    transfer(1)
