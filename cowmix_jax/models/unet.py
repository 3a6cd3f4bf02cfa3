"""The paper's U-Net decoder (Table 4) on a ResNet or EfficientNet-Lite encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cowmix_jax.models.conv import Conv, conv_general_dilated
from cowmix_jax.models.efficientnet_lite import EfficientNetLite
from cowmix_jax.models.feature_dropout import split_if_doubled, with_dropped_copy
from cowmix_jax.models.resnet import ResNetEncoder

# Table 4: conv widths at 1/32, 1/16, 1/8, 1/4, 1/2 and full resolution.
PAPER_DECODER_WIDTHS = (192, 128, 96, 64, 48, 32)
# Encoder -> the names of its feature maps at strides 4, 8, 16 and 32.
ENCODER_SKIPS = {
    "resnet": ("conv2_x", "conv3_x", "conv4_x", "conv5_x"),
    "efficientnet_lite": ("stride_4", "stride_8", "stride_16", "stride_32"),
}


def _conv3x3_relu(x: jax.Array, features: int, name: str, dtype=jnp.float32) -> jax.Array:
  return nn.relu(Conv(features, (3, 3), padding=1, name=name, dtype=dtype)(x))


# Transposed 4x4 stride-2 convolution ("SAME", as lax.conv_transpose pads it) by output
# phase: output row 2m + a takes kernel rows TAPS[a] at input rows m + OFFSETS[a][0] and
# m + OFFSETS[a][1]; the same along columns.
TAPS = ((0, 2), (1, 3))
PHASE_PADDING = ((1, 0), (0, 1))  # pads of each phase's 2-tap convolution: (m - 1, m), (m, m + 1)


class TransposedConv4x4(nn.Module):
  """``nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")``, the same
  parameters (``kernel [4, 4, in, out]``, ``bias [out]``, the same initialisers) and
  the same output, computed as four 2x2 convolutions, one per output phase, interleaved.

  ``lax.conv_transpose`` dilates its input with zeros; XLA:CPU runs such convolutions
  and their gradients an order of magnitude slower than plain ones (a U-Net R50 step
  spent most of its time there). The phase form does no multiplication by the zeros.
  """

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[N, H, W, in]`` -> ``[N, 2H, 2W, features]``."""
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (4, 4, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    phases = [[conv_general_dilated(
        x, kernel[np.ix_(TAPS[a], TAPS[b])], (1, 1), (PHASE_PADDING[a], PHASE_PADDING[b]),
        dimension_numbers=("NHWC", "HWIO", "NHWC")) for b in (0, 1)] for a in (0, 1)]
    n, height, width, _ = x.shape
    # [a][b] of [N, H, W, C] -> [N, H, a, W, b, C] -> [N, 2H, 2W, C]
    y = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
    y = y.reshape(n, 2 * height, 2 * width, self.features)
    return y + bias.astype(self.dtype)


def _upsample_relu(x: jax.Array, features: int, name: str, dtype=jnp.float32) -> jax.Array:
  """Transposed 4x4 convolution with stride 2 (doubles height and width)."""
  return nn.relu(TransposedConv4x4(features, dtype, name=name)(x))


class UNet(nn.Module):
  """The U-Net of French et al. (Table 4, Figure 7) on any encoder of ENCODER_SKIPS.

  From the 1/32 features (ResNet conv5_x): conv3x3 w0 -> tconv w1, concat 1/16 ->
  conv3x3 w1 -> tconv w2, concat 1/8 -> conv3x3 w2 -> tconv w3, concat 1/4 -> conv3x3
  w3 -> tconv w4 -> conv3x3 w4 -> tconv w5 -> conv3x3 w5 -> conv1x1 to classes.

  Attributes:
    num_classes: number of output classes C.
    encoder: ``resnet`` (the paper's) or ``efficientnet_lite``; either is the submodule
      ``encoder``.
    depth, width: the ResNet's depth and base width (see ResNetEncoder).
    encoder_variant: the EfficientNet-Lite variant (lite0, lite1, lite2).
    freeze_bn: the encoder's BatchNorm uses its stored statistics.
    decoder_widths: six decoder widths (the paper's are 192, 128, 96, 64, 48, 32).
    remat: rematerialise the encoder's blocks in the backward pass (``models.remat``).
  """

  num_classes: int
  depth: int = 50
  width: int = 64
  freeze_bn: bool = False
  decoder_widths: Sequence[int] = PAPER_DECODER_WIDTHS
  dtype: Any = jnp.float32  # bfloat16: mixed precision (parameters stay float32)
  encoder: str = "resnet"
  encoder_variant: str = "lite0"
  remat: bool = False

  def _encoder(self) -> nn.Module:
    if self.encoder == "resnet":
      return ResNetEncoder(self.depth, self.width, self.freeze_bn, self.dtype,
                           remat=self.remat, name="encoder")
    if self.encoder == "efficientnet_lite":
      return EfficientNetLite(self.encoder_variant, self.freeze_bn, self.dtype,
                              remat=self.remat, name="encoder")
    raise ValueError(f"config.model.encoder={self.encoder!r}: choose one of "
                     f"{sorted(ENCODER_SKIPS)}")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               feature_dropout_key: jax.Array | None = None):
    """Args: x ``[N, H, W, 3]`` float32. Sizes that are not multiples of 32 (e.g.
    Pascal's 321x321 crops) are zero-padded at the bottom and right (0 is the mean
    colour after normalisation) and the logits are cropped back.
    ``feature_dropout_key``: UniMatch's feature perturbation. With a key, every feature
    map the decoder reads (the three skip levels and the deepest) is decoded twice in one
    batch, as is and through ``feature_dropout.drop_channels``.

    Returns:
      ``[N, H, W, C]`` float32 logits; with ``feature_dropout_key``, the pair
      ``(logits, perturbed_logits)``.
    """
    height, width = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, -height % 32), (0, -width % 32), (0, 0)))
    if len(self.decoder_widths) != 6:
      raise ValueError(f"decoder_widths needs 6 values, got {tuple(self.decoder_widths)}")
    w = self.decoder_widths
    features = self._encoder()(x, train)
    if feature_dropout_key is not None:
      features = with_dropped_copy(features, feature_dropout_key,
                                   ENCODER_SKIPS[self.encoder])
    skip_4, skip_8, skip_16, top = ENCODER_SKIPS[self.encoder]
    y = _conv3x3_relu(features[top], w[0], "conv_32", self.dtype)
    y = _upsample_relu(y, w[1], "up_16", self.dtype)
    for level, skip_name in enumerate((skip_16, skip_8, skip_4)):
      y = jnp.concatenate([y, features[skip_name]], axis=-1)
      y = _conv3x3_relu(y, w[level + 1], f"conv_{16 >> level}", self.dtype)
      y = _upsample_relu(y, w[level + 2], f"up_{8 >> level}", self.dtype)
    y = _conv3x3_relu(y, w[4], "conv_2", self.dtype)
    y = _upsample_relu(y, w[5], "up_1", self.dtype)
    y = _conv3x3_relu(y, w[5], "conv_1", self.dtype)
    logits = Conv(self.num_classes, (1, 1), name="classifier", dtype=self.dtype)(y)
    logits = logits.astype(jnp.float32)[:, :height, :width]
    return split_if_doubled(logits, feature_dropout_key is not None)
