"""UniMatch's feature perturbation: whole channels of encoder features dropped.

UniMatch V1 decodes the weak view's encoder features a second time through
``nn.Dropout2d(0.5)`` (each channel of each image zeroed with probability 0.5, the kept
ones scaled by 2) and trains that prediction on the weak view's pseudo-labels. Here that
is flax's ``nn.Dropout`` broadcast over the spatial axes, applied to every feature map
the decoder reads (each U-Net skip level and the deepest features).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# UniMatch's rate.
FEATURE_DROPOUT_RATE = 0.5


def drop_channels(features: Mapping[str, jax.Array], rng: jax.Array,
                  rate: float = FEATURE_DROPOUT_RATE) -> dict[str, jax.Array]:
  """``features`` (name -> ``[N, H, W, C]``) with each channel of each image zeroed with
  probability ``rate`` and the kept ones scaled by ``1 / (1 - rate)``; every map draws
  its own channels (from ``rng`` folded with the map's position in sorted order)."""
  dropout = nn.Dropout(rate, broadcast_dims=(1, 2), deterministic=False)
  return {name: dropout.apply({}, value, rngs={"dropout": jax.random.fold_in(rng, index)})
          for index, (name, value) in enumerate(sorted(features.items()))}


def with_dropped_copy(features: Mapping[str, jax.Array], key: jax.Array,
                      names: Sequence[str]) -> dict[str, jax.Array]:
  """``features`` with each map of ``names`` doubled along the batch: ``[2N, H, W, C]``,
  the map as is, then ``drop_channels`` of it (UniMatch's ``torch.cat((feat,
  nn.Dropout2d(0.5)(feat)))``), so the decoder runs both in one pass and its output
  splits into halves. Maps not in ``names`` are left out."""
  dropped = drop_channels({name: features[name] for name in names}, key)
  return {name: jnp.concatenate([features[name], dropped[name]]) for name in names}


def split_if_doubled(logits: jax.Array, doubled: bool):
  """The logits of a pass over ``with_dropped_copy`` features (``[2N, ...]``) as the pair
  ``(logits, perturbed_logits)``, each ``[N, ...]``; ``logits`` unchanged otherwise."""
  return tuple(jnp.split(logits, 2)) if doubled else logits
