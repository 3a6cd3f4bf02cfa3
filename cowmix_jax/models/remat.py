"""Rematerialisation of encoder blocks (``config.model.remat``)."""

from __future__ import annotations

import flax.linen as nn
import jax


def rematerialised(block_cls: type[nn.Module]) -> type[nn.Module]:
  """``block_cls`` under ``jax.checkpoint`` (flax's ``nn.remat``) with the
  ``nothing_saveable`` policy: the backward pass keeps only each block's input and
  recomputes the block's inside (convolutions, BatchNorm, activations) from it.

  Same parameter names, same results; less memory for one more forward pass of the
  encoder's blocks. BatchNorm's running statistics are updated once, by the forward
  pass (the recomputation's updates are discarded).
  """
  return nn.remat(block_cls, policy=jax.checkpoint_policies.nothing_saveable)
