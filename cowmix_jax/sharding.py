"""The 1-D ``('data',)`` device mesh and the two placements used everywhere: the train
state replicated, batches sharded along their leading axis."""

from __future__ import annotations

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
