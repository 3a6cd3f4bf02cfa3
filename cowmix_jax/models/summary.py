"""Start-up report: parameters per module and forward FLOPs per image (XLA's count)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict


def parameter_counts(params, depth: int = 2) -> dict[str, int]:
  """Parameters per module path, grouped by the first ``depth`` path components
  (``encoder/conv4_x_block0``, ``up_16``, ...), in tree order."""
  counts: dict[str, int] = {}
  for path, leaf in flatten_dict(params).items():
    name = "/".join(path[:min(depth, len(path) - 1)]) or path[0]
    counts[name] = counts.get(name, 0) + int(np.prod(np.shape(leaf)))
  return counts


def forward_flops(model, variables, input_shape: tuple[int, ...]) -> float:
  """FLOPs of one inference forward pass per image at ``input_shape`` ``[N, H, W, C]``,
  from XLA's cost analysis of the compiled function (a multiply-add counts 2)."""
  images = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      variables, images).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  return float(analysis["flops"]) / input_shape[0]


def _encoder_group(module: str) -> str:
  """ResNet ``conv4_x_block3`` -> ``conv4_x``; EfficientNet-Lite ``block12`` -> ``blocks``."""
  if re.fullmatch(r"block\d+", module):
    return "blocks"
  return module.split("_block")[0]


def report(model, variables, input_shape: tuple[int, ...]) -> str:
  """A table of parameter counts by module (encoder stages summed) and the FLOPs."""
  counts = parameter_counts(variables["params"])
  grouped: dict[str, int] = {}
  for name, count in counts.items():
    parts = name.split("/")
    key = parts[0] if parts[0] != "encoder" else "encoder/" + _encoder_group(parts[1])
    grouped[key] = grouped.get(key, 0) + count
  width = max(len(k) for k in grouped) + 2
  lines = [f"{name:<{width}}{count:>14,}" for name, count in grouped.items()]
  lines.append(f"{'total':<{width}}{sum(counts.values()):>14,}")
  flops = forward_flops(model, variables, input_shape)
  lines.append(f"forward GFLOPs per {input_shape[1]}x{input_shape[2]} image: {flops / 1e9:.2f}")
  return "\n".join(lines)
