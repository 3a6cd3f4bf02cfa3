"""ResNet encoders (torchvision layout, NHWC) returning the feature pyramid.

Bottleneck blocks put the stride on the 3x3 convolution (torchvision "v1.5").
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

# (block type, blocks per stage) for each depth.
RESNET_SPECS: Dict[int, Tuple[str, Tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

STAGE_NAMES = ("conv2_x", "conv3_x", "conv4_x", "conv5_x")


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

  features: int
  strides: int
  norm: functools.partial
  conv: functools.partial = functools.partial(nn.Conv, use_bias=False)

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.features, (3, 3), self.strides, padding=1)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3), padding=1)(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features, (1, 1), self.strides,
                           name="downsample_conv")(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a projection shortcut."""

  features: int
  strides: int
  norm: functools.partial
  conv: functools.partial = functools.partial(nn.Conv, use_bias=False)

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    y = self.conv(self.features, (1, 1))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3), self.strides, padding=1)(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features * 4, (1, 1), self.strides,
                           name="downsample_conv")(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


def stage_channels(depth: int, width: int = 64) -> Tuple[int, int, int, int]:
  """Output channels of conv2_x..conv5_x for a ResNet of this depth and base width."""
  block_type, _ = RESNET_SPECS[depth]
  expansion = BLOCKS[block_type].expansion
  return tuple(width * 2**i * expansion for i in range(4))


class ResNetEncoder(nn.Module):
  """ResNet-18/34/50/101 feature extractor.

  Attributes:
    depth: 18, 34, 50 or 101.
    width: channels of the stem and of conv2_x's 3x3 convs (64 in torchvision).
    freeze_bn: always use the stored BatchNorm statistics (the paper's frozen BN).
    dtype: computation dtype (bfloat16 for mixed precision); parameters stay float32.
  """

  depth: int = 50
  width: int = 64
  freeze_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Dict[str, jax.Array]:
    """Args: x ``[N, H, W, 3]``. Returns features at strides 4, 8, 16, 32.

    Returns:
      ``{"conv2_x": [N, H/4, W/4, C2], ..., "conv5_x": [N, H/32, W/32, C5]}``.
    """
    if self.depth not in RESNET_SPECS:
      raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {self.depth}")
    block_type, stage_sizes = RESNET_SPECS[self.depth]
    block_cls = BLOCKS[block_type]
    norm = functools.partial(
        nn.BatchNorm, use_running_average=(not train) or self.freeze_bn,
        momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    x = conv(self.width, (7, 7), 2, padding=3, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {}
    for stage, num_blocks in enumerate(stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = block_cls(self.width * 2**stage, strides, norm, conv,
                      name=f"{STAGE_NAMES[stage]}_block{block}")(x)
      features[STAGE_NAMES[stage]] = x
    return features
