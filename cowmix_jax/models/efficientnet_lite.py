"""EfficientNet-Lite0/1/2 encoders (NHWC) returning the feature pyramid.

EfficientNet-Lite (Tan and Le; the TensorFlow ``efficientnet/lite`` builder) is
EfficientNet-B0's inverted-residual network made friendly to integer hardware: ReLU6
instead of swish, no squeeze-and-excitation, and a stem (32 channels) and head (1280
channels) that keep their widths while the variant's width and depth multipliers scale
everything in between. Convolutions pad like TensorFlow's ``SAME`` (more padding after
than before when the total is odd), which is what the ImageNet weights were trained
with; ``python -m cowmix_jax.models.convert --layout=efficientnet_lite0`` converts them.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cowmix_jax.models.conv import Conv
from cowmix_jax.models.remat import rematerialised


class Stage(NamedTuple):
  """One stage of Lite0, before the width and depth multipliers."""
  kernel: int
  stride: int
  expand_ratio: int
  in_channels: int
  out_channels: int
  repeats: int


# efficientnet_lite_builder's block strings r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320.
LITE_STAGES = (
    Stage(3, 1, 1, 32, 16, 1),
    Stage(3, 2, 6, 16, 24, 2),
    Stage(5, 2, 6, 24, 40, 2),
    Stage(3, 2, 6, 40, 80, 3),
    Stage(5, 1, 6, 80, 112, 3),
    Stage(5, 2, 6, 112, 192, 4),
    Stage(3, 1, 6, 192, 320, 1),
)
# variant -> (width multiplier, depth multiplier, ImageNet resolution).
VARIANTS: dict[str, tuple[float, float, int]] = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
}
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Which stage ends at each output stride; stride 32 is the head convolution's output.
STRIDE_OF_STAGE_END = {0: 2, 1: 4, 2: 8, 4: 16}
FEATURE_NAMES = ("stride_2", "stride_4", "stride_8", "stride_16", "stride_32")
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.99


def round_channels(channels: int, width_multiplier: float, divisor: int = 8) -> int:
  """The builder's rounding: ``channels x multiplier`` to the nearest multiple of
  ``divisor`` (at least ``divisor``), never more than 10% below the product."""
  scaled = channels * width_multiplier
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return int(rounded)


def scaled_stages(variant: str) -> tuple[Stage, ...]:
  """The variant's stages: channels rounded by the width multiplier, repeats rounded up
  by the depth multiplier, except the first and last stages (Lite keeps them) and the
  first stage's input (the fixed 32-channel stem)."""
  if variant not in VARIANTS:
    raise ValueError(f"EfficientNet-Lite variant {variant!r}: choose one of {sorted(VARIANTS)}")
  width, depth, _ = VARIANTS[variant]
  stages = []
  for index, stage in enumerate(LITE_STAGES):
    fixed = index in (0, len(LITE_STAGES) - 1)
    stages.append(stage._replace(
        in_channels=STEM_CHANNELS if index == 0 else round_channels(stage.in_channels, width),
        out_channels=round_channels(stage.out_channels, width),
        repeats=stage.repeats if fixed else int(math.ceil(depth * stage.repeats))))
  return tuple(stages)


def feature_channels(variant: str) -> dict[str, int]:
  """Channels of each returned feature map, by name."""
  stages = scaled_stages(variant)
  channels = {f"stride_{stride}": stages[index].out_channels
              for index, stride in STRIDE_OF_STAGE_END.items()}
  channels["stride_32"] = HEAD_CHANNELS
  return channels


def same_padding(size: int, kernel: int, stride: int) -> tuple[tuple[int, int], int]:
  """TensorFlow's SAME padding of one axis: ``((before, after), output size)``, with the
  odd pixel after."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return (total // 2, total - total // 2), out


def depthwise_by_shifts(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise convolution as a sum of ``k x k`` strided slices times per-channel
  weights, with SAME padding. Same result as the grouped convolution; on CPUs its
  gradient is 10-30x faster than XLA's grouped-convolution gradient.

  Args: x ``[N, H, W, C]``, kernel ``[k, k, 1, C]``. Returns ``[N, H/s, W/s, C]``.
  """
  k = kernel.shape[0]
  pad_h, out_h = same_padding(x.shape[1], k, stride)
  pad_w, out_w = same_padding(x.shape[2], k, stride)
  padded = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  total = None
  for i in range(k):
    for j in range(k):
      window = lax.slice(padded, (0, i, j, 0),
                         (padded.shape[0], i + stride * (out_h - 1) + 1,
                          j + stride * (out_w - 1) + 1, padded.shape[3]),
                         (1, stride, stride, 1))
      term = window * kernel[i, j, 0]
      total = term if total is None else total + term
  return total


def depthwise_by_grouped_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """XLA's grouped convolution (one group per channel), SAME padding; shapes as
  depthwise_by_shifts."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=x.shape[-1])


DEPTHWISE_IMPLEMENTATIONS = {"shifts": depthwise_by_shifts,
                             "grouped_conv": depthwise_by_grouped_conv}


class DepthwiseConv(nn.Module):
  """``k x k`` depthwise convolution without bias, kernel ``[k, k, 1, C]`` (nn.Conv's
  layout and initialiser).

  Attributes:
    implementation: ``shifts``, ``grouped_conv``, or ``auto``: shifts on CPUs (where
      XLA's grouped-convolution gradient is slow), grouped_conv on GPUs and TPUs.
  """

  kernel_size: int
  strides: int = 1
  dtype: Any = jnp.float32
  implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, self.kernel_size, 1, channels), jnp.float32)
    name = self.implementation
    if name == "auto":
      name = "shifts" if jax.default_backend() == "cpu" else "grouped_conv"
    if name not in DEPTHWISE_IMPLEMENTATIONS:
      raise ValueError(f"depthwise implementation {name!r}: choose one of "
                       f"{sorted(DEPTHWISE_IMPLEMENTATIONS)} or auto")
    return DEPTHWISE_IMPLEMENTATIONS[name](x.astype(self.dtype), kernel.astype(self.dtype),
                                           self.strides)


class MBConvBlock(nn.Module):
  """Inverted residual: 1x1 expand (unless the ratio is 1), kxk depthwise (strided),
  1x1 project, each with BatchNorm; ReLU6 after the first two; identity shortcut when
  the stride is 1 and the channels agree."""

  stage: Stage
  strides: int
  in_channels: int
  norm: functools.partial
  conv: functools.partial
  depthwise_implementation: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[N, H, W, in]`` -> ``[N, ceil(H/s), ceil(W/s), out]``."""
    hidden = self.in_channels * self.stage.expand_ratio
    y = x
    if self.stage.expand_ratio != 1:
      y = self.conv(hidden, (1, 1), name="expand_conv")(y)
      y = nn.relu6(self.norm(name="expand_bn")(y))
    k = self.stage.kernel
    y = DepthwiseConv(k, self.strides, self.conv.keywords["dtype"],
                      self.depthwise_implementation, name="depthwise_conv")(y)
    y = nn.relu6(self.norm(name="depthwise_bn")(y))
    y = self.conv(self.stage.out_channels, (1, 1), name="project_conv")(y)
    y = self.norm(name="project_bn")(y)
    if self.strides == 1 and self.in_channels == self.stage.out_channels:
      y = y + x
    return y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite feature extractor, optionally with the ImageNet classifier.

  Parameter names follow the PyTorch blocks one to one: ``stem_conv``, ``stem_bn``,
  ``block{N}`` (N counts every block, as ``_blocks.N``), ``head_conv``, ``head_bn`` and
  ``imagenet_head``.

  Attributes:
    variant: lite0, lite1 or lite2.
    freeze_bn: always use the stored BatchNorm statistics (the paper's frozen BN).
    dtype: computation dtype (bfloat16 for mixed precision); parameters stay float32.
    imagenet_head: also return the 1000 ImageNet logits (global average pool, dense).
    depthwise_implementation: see DepthwiseConv (the same weights and results).
    remat: rematerialise every MBConv block in the backward pass
      (``models.remat``).
  """

  variant: str = "lite0"
  freeze_bn: bool = False
  dtype: Any = jnp.float32
  imagenet_head: bool = False
  depthwise_implementation: str = "auto"
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Args: x ``[N, H, W, 3]``, normalised as ``(pixel - 127) / 128``.

    Returns:
      ``{"stride_2": [N, H/2, W/2, C], "stride_4", "stride_8", "stride_16",
      "stride_32": [N, H/32, W/32, 1280]}`` (sizes rounded up, as TensorFlow's SAME
      padding rounds them), plus ``"imagenet_logits": [N, 1000]`` float32 with
      ``imagenet_head``.
    """
    norm = functools.partial(
        nn.BatchNorm, use_running_average=(not train) or self.freeze_bn,
        momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, dtype=self.dtype)
    conv = functools.partial(Conv, use_bias=False, padding="SAME", dtype=self.dtype)
    x = conv(STEM_CHANNELS, (3, 3), 2, name="stem_conv")(x)
    x = nn.relu6(norm(name="stem_bn")(x))
    block_cls = rematerialised(MBConvBlock) if self.remat else MBConvBlock
    features, block_index = {}, 0
    for index, stage in enumerate(scaled_stages(self.variant)):
      for repeat in range(stage.repeats):
        first = repeat == 0
        x = block_cls(stage, stage.stride if first else 1,
                      stage.in_channels if first else stage.out_channels, norm, conv,
                      self.depthwise_implementation, name=f"block{block_index}")(x)
        block_index += 1
      if index in STRIDE_OF_STAGE_END:
        features[f"stride_{STRIDE_OF_STAGE_END[index]}"] = x
    x = conv(HEAD_CHANNELS, (1, 1), name="head_conv")(x)
    features["stride_32"] = nn.relu6(norm(name="head_bn")(x))
    if self.imagenet_head:
      pooled = jnp.mean(features["stride_32"].astype(jnp.float32), axis=(1, 2))
      features["imagenet_logits"] = nn.Dense(1000, name="imagenet_head",
                                             dtype=self.dtype)(pooled).astype(jnp.float32)
    return features
