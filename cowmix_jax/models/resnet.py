"""ResNet encoders (NHWC) returning the feature pyramid, optionally dilated.

Two block layouts: ``torchvision`` bottlenecks put the stride on the 3x3 convolution
("v1.5"); ``caffe`` bottlenecks (the original ResNet, and the DeepLab v2 weights) put it
on the first 1x1 convolution and use a ceil-mode max pool. An output stride of 16 or 8
replaces the strides of the last stages by dilation: torchvision gives the first block
of a dilated stage the previous dilation, caffe (DeepLab v2) dilates every block.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cowmix_jax.models.conv import Conv
from cowmix_jax.models.remat import rematerialised

# (block type, blocks per stage) for each depth.
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

STAGE_NAMES = ("conv2_x", "conv3_x", "conv4_x", "conv5_x")



class ResidualBlock(nn.Module):
  """The fields every residual block takes. ``caffe``: stride on the first 1x1
  convolution instead of the 3x3 (bottlenecks only: basic blocks have no 1x1 to stride).
  ``expansion``: output channels per ``features``."""

  features: int
  strides: int
  norm: functools.partial
  conv: functools.partial = functools.partial(Conv, use_bias=False)
  dilation: int = 1
  caffe: bool = False

  expansion = 1


class BasicBlock(ResidualBlock):
  """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    d = self.dilation
    y = self.conv(self.features, (3, 3), self.strides, padding=d, kernel_dilation=d)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3), padding=d, kernel_dilation=d)(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features, (1, 1), self.strides,
                           name="downsample_conv")(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


class BottleneckBlock(ResidualBlock):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a projection shortcut."""

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    residual = x
    stride_1x1, stride_3x3 = (self.strides, 1) if self.caffe else (1, self.strides)
    d = self.dilation
    y = self.conv(self.features, (1, 1), stride_1x1)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3), stride_3x3, padding=d, kernel_dilation=d)(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features * 4, (1, 1), self.strides,
                           name="downsample_conv")(residual)
      residual = self.norm(name="downsample_bn")(residual)
    return nn.relu(y + residual)


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


def stage_strides_and_dilations(output_stride: int, caffe: bool):
  """``[(stride, first block dilation, other blocks dilation)]`` of conv2_x..conv5_x."""
  if output_stride not in (8, 16, 32):
    raise ValueError(f"output stride must be 8, 16 or 32, got {output_stride}")
  plan, current, dilation = [(1, 1, 1)], 4, 1
  for _ in range(3):
    if current >= output_stride:
      previous, dilation = dilation, dilation * 2
      plan.append((1, dilation if caffe else previous, dilation))
    else:
      current *= 2
      plan.append((2, dilation, dilation))
  return plan


def max_pool_3x3_s2(x: jax.Array, ceil_mode: bool) -> jax.Array:
  """3x3 max pool, stride 2, padding 1; ``ceil_mode`` as PyTorch (Caffe's rounding)."""
  pads = []
  for size in x.shape[1:3]:
    extra = 0
    if ceil_mode:
      remainder = (size + 2 - 3) % 2
      # An extra window only if it starts inside the image or its left padding.
      if remainder and ((size + 2 - 3) // 2 + 1) * 2 < size + 1:
        extra = 2 - remainder
    pads.append((1, 1 + extra))
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)


class ResNetEncoder(nn.Module):
  """ResNet-18/34/50/101 feature extractor.

  Attributes:
    depth: 18, 34, 50 or 101.
    width: channels of the stem and of conv2_x's 3x3 convs (64 in torchvision).
    freeze_bn: always use the stored BatchNorm statistics (the paper's frozen BN).
    dtype: computation dtype (bfloat16 for mixed precision); parameters stay float32.
    output_stride: 32, 16 or 8 (dilation instead of the last strides).
    style: ``torchvision`` or ``caffe`` (see the module docstring).
    remat: rematerialise every residual block in the backward pass (``models.remat``).
  """

  depth: int = 50
  width: int = 64
  freeze_bn: bool = False
  dtype: Any = jnp.float32
  output_stride: int = 32
  style: str = "torchvision"
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Args: x ``[N, H, W, 3]``.

    Returns:
      ``{"conv2_x": [N, H/4, W/4, C2], ..., "conv5_x": [N, H/s, W/s, C5]}`` with ``s``
      the output stride (sizes rounded as the convolutions round them).
    """
    if self.style not in ("torchvision", "caffe"):
      raise ValueError(f"ResNet style must be torchvision or caffe, got {self.style!r}")
    caffe = self.style == "caffe"
    if self.depth not in RESNET_SPECS:
      raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {self.depth}")
    block_type, stage_sizes = RESNET_SPECS[self.depth]
    block_cls = rematerialised(BLOCKS[block_type]) if self.remat else BLOCKS[block_type]
    norm = functools.partial(
        nn.BatchNorm, use_running_average=(not train) or self.freeze_bn,
        momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype)
    x = conv(self.width, (7, 7), 2, padding=3, name="stem_conv")(x)
    x = nn.relu(norm(name="stem_bn")(x))
    x = max_pool_3x3_s2(x, ceil_mode=caffe)
    features = {}
    plan = stage_strides_and_dilations(self.output_stride, caffe)
    for stage, (num_blocks, (stride, first, rest)) in enumerate(zip(stage_sizes, plan)):
      for block in range(num_blocks):
        x = block_cls(self.width * 2**stage, stride if block == 0 else 1, norm, conv,
                      first if block == 0 else rest, caffe,
                      name=f"{STAGE_NAMES[stage]}_block{block}")(x)
      features[STAGE_NAMES[stage]] = x
    return features
