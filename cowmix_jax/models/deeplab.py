"""DeepLab v2 and v3+ on dilated ResNets (the paper's appendix D.3.2; docs/MODELS.md)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cowmix_jax.models.conv import Conv
from cowmix_jax.models.feature_dropout import split_if_doubled, with_dropped_copy
from cowmix_jax.models.resnet import ResNetEncoder


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """``[N, h, w, C]`` -> ``[N, height, width, C]``, half-pixel bilinear (PyTorch's
  ``F.interpolate(..., mode="bilinear", align_corners=False)`` when upsampling)."""
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), "bilinear")


class DeepLabV2(nn.Module):
  """DeepLab v2: a Caffe-style ResNet at output stride 8 and an ASPP head that sums four
  dilated 3x3 convolutions straight to class logits, upsampled to the input.

  Attributes:
    num_classes: C.
    depth, width, freeze_bn: encoder settings (ResNet-101, 64, frozen in the paper).
    aspp_rates: dilation of the four branches.
    two_branch_bug: sum only the first two branches, as the widely copied PyTorch code
      does (a misplaced ``return`` in its loop). Off by default; for comparisons only.
      The other branches still exist (same parameters as the PyTorch module).
    dtype: computation dtype.
    remat: rematerialise the encoder's blocks in the backward pass (``models.remat``).
  """

  num_classes: int
  depth: int = 101
  width: int = 64
  freeze_bn: bool = True
  aspp_rates: Sequence[int] = (6, 12, 18, 24)
  two_branch_bug: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               feature_dropout_key: jax.Array | None = None):
    """Args: x ``[N, H, W, 3]``; ``feature_dropout_key``: also decode the features
    through channel dropout (UniMatch's feature perturbation, on conv5_x).

    Returns ``[N, H, W, C]`` float32 logits; with ``feature_dropout_key``, the pair
    ``(logits, perturbed_logits)``."""
    height, width = x.shape[1:3]
    features = ResNetEncoder(self.depth, self.width, self.freeze_bn, self.dtype,
                             output_stride=8, style="caffe", remat=self.remat,
                             name="encoder")(x, train)
    if feature_dropout_key is not None:
      features = with_dropped_copy(features, feature_dropout_key, ("conv5_x",))
    branches = [Conv(self.num_classes, (3, 3), padding=rate, kernel_dilation=rate,
                        kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                        name=f"aspp_{i}")(features["conv5_x"])
                for i, rate in enumerate(self.aspp_rates)]
    used = branches[:2] if self.two_branch_bug else branches
    logits = functools.reduce(jnp.add, used)
    return split_if_doubled(resize_bilinear(logits.astype(jnp.float32), height, width),
                     feature_dropout_key is not None)


class ConvBNReLU(nn.Module):
  features: int
  kernel: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pad = self.dilation * (self.kernel // 2)
    x = Conv(self.features, (self.kernel, self.kernel), padding=pad,
                kernel_dilation=self.dilation, use_bias=False, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype)(x)
    return nn.relu(x)


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling of DeepLab v3: a 1x1 branch, three dilated 3x3
  branches, image pooling, then a 1x1 projection (all 256 wide with BatchNorm)."""

  rates: Sequence[int] = (12, 24, 36)
  features: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    branches = [ConvBNReLU(self.features, 1, dtype=self.dtype, name="branch_1x1")(x, train)]
    for i, rate in enumerate(self.rates):
      branches.append(ConvBNReLU(self.features, 3, rate, dtype=self.dtype,
                                 name=f"branch_rate{i}")(x, train))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = ConvBNReLU(self.features, 1, dtype=self.dtype, name="image_pool")(pooled, train)
    branches.append(jnp.broadcast_to(pooled, branches[0].shape))
    return ConvBNReLU(self.features, 1, dtype=self.dtype,
                      name="project")(jnp.concatenate(branches, -1), train)


def v3plus_aspp_rates(output_stride: int) -> tuple[int, int, int]:
  """DeepLab v3+'s ASPP dilations: 6/12/18 at output stride 16, doubled at 8 (Chen et
  al., 2018; UniMatch's [6, 12, 18] at 16)."""
  return tuple(rate * 16 // output_stride for rate in (6, 12, 18))


class DeepLabV3Plus(nn.Module):
  """DeepLab v3+ (the authors' later code): torchvision ResNet at output stride 8 or 16,
  ASPP (rates 12/24/36 at 8, 6/12/18 at 16, with image pooling), a 48-channel
  projection of conv2_x, two 3x3 256 convolutions, class logits upsampled to the
  input."""

  num_classes: int
  depth: int = 101
  width: int = 64
  freeze_bn: bool = True
  output_stride: int = 8
  aspp_rates: Sequence[int] | None = None  # None: v3plus_aspp_rates(output_stride)
  dtype: Any = jnp.float32
  remat: bool = False  # rematerialise the encoder's blocks (``models.remat``)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               feature_dropout_key: jax.Array | None = None):
    """Args: x ``[N, H, W, 3]``; ``feature_dropout_key``: also decode the low- and
    high-level features (conv2_x, conv5_x) through channel dropout (UniMatch's feature
    perturbation).

    Returns ``[N, H, W, C]`` float32 logits; with ``feature_dropout_key``, the pair
    ``(logits, perturbed_logits)``."""
    height, width = x.shape[1:3]
    features = ResNetEncoder(self.depth, self.width, self.freeze_bn, self.dtype,
                             output_stride=self.output_stride, remat=self.remat,
                             name="encoder")(x, train)
    if feature_dropout_key is not None:
      features = with_dropped_copy(features, feature_dropout_key, ("conv2_x", "conv5_x"))
    rates = self.aspp_rates or v3plus_aspp_rates(self.output_stride)
    y = ASPP(rates, dtype=self.dtype, name="aspp")(features["conv5_x"], train)
    low = ConvBNReLU(48, 1, dtype=self.dtype, name="low_level")(features["conv2_x"], train)
    y = resize_bilinear(y, low.shape[1], low.shape[2])
    y = jnp.concatenate([y, low.astype(y.dtype)], axis=-1)
    y = ConvBNReLU(256, 3, dtype=self.dtype, name="decoder_0")(y, train)
    y = ConvBNReLU(256, 3, dtype=self.dtype, name="decoder_1")(y, train)
    logits = Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(y)
    return split_if_doubled(resize_bilinear(logits.astype(jnp.float32), height, width),
                     feature_dropout_key is not None)
