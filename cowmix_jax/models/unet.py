"""The paper's U-Net decoder (Table 4) on a ResNet encoder."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cowmix_jax.models.resnet import ResNetEncoder

# Table 4: conv widths at 1/32, 1/16, 1/8, 1/4, 1/2 and full resolution.
PAPER_DECODER_WIDTHS = (192, 128, 96, 64, 48, 32)


def _conv3x3_relu(x: jax.Array, features: int, name: str, dtype=jnp.float32) -> jax.Array:
  return nn.relu(nn.Conv(features, (3, 3), padding=1, name=name, dtype=dtype)(x))


def _upsample_relu(x: jax.Array, features: int, name: str, dtype=jnp.float32) -> jax.Array:
  """Transposed 4x4 convolution with stride 2 (doubles height and width)."""
  return nn.relu(nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME",
                                  name=name, dtype=dtype)(x))


class UNet(nn.Module):
  """ResNet-encoder U-Net of French et al. (Table 4, Figure 7).

  From conv5_x: conv3x3 w0 -> tconv w1, concat conv4_x -> conv3x3 w1 -> tconv w2,
  concat conv3_x -> conv3x3 w2 -> tconv w3, concat conv2_x -> conv3x3 w3 -> tconv w4
  -> conv3x3 w4 -> tconv w5 -> conv3x3 w5 -> conv1x1 to classes.

  Attributes:
    num_classes: number of output classes C.
    depth, width, freeze_bn: encoder settings (see ResNetEncoder).
    decoder_widths: six decoder widths (the paper's are 192, 128, 96, 64, 48, 32).
  """

  num_classes: int
  depth: int = 50
  width: int = 64
  freeze_bn: bool = False
  decoder_widths: Sequence[int] = PAPER_DECODER_WIDTHS
  dtype: Any = jnp.float32  # bfloat16: mixed precision (parameters stay float32)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x ``[N, H, W, 3]`` float32. Sizes that are not multiples of 32 (e.g.
    Pascal's 321x321 crops) are zero-padded at the bottom and right (0 is the mean
    colour after normalisation) and the logits are cropped back.

    Returns:
      ``[N, H, W, C]`` float32 logits.
    """
    height, width = x.shape[1:3]
    x = jnp.pad(x, ((0, 0), (0, -height % 32), (0, -width % 32), (0, 0)))
    if len(self.decoder_widths) != 6:
      raise ValueError(f"decoder_widths needs 6 values, got {tuple(self.decoder_widths)}")
    w = self.decoder_widths
    features = ResNetEncoder(self.depth, self.width, self.freeze_bn, self.dtype,
                             name="encoder")(x, train)
    y = _conv3x3_relu(features["conv5_x"], w[0], "conv_32", self.dtype)
    y = _upsample_relu(y, w[1], "up_16", self.dtype)
    for level, skip_name in enumerate(("conv4_x", "conv3_x", "conv2_x")):
      y = jnp.concatenate([y, features[skip_name]], axis=-1)
      y = _conv3x3_relu(y, w[level + 1], f"conv_{16 >> level}", self.dtype)
      y = _upsample_relu(y, w[level + 2], f"up_{8 >> level}", self.dtype)
    y = _conv3x3_relu(y, w[4], "conv_2", self.dtype)
    y = _upsample_relu(y, w[5], "up_1", self.dtype)
    y = _conv3x3_relu(y, w[5], "conv_1", self.dtype)
    logits = nn.Conv(self.num_classes, (1, 1), name="classifier", dtype=self.dtype)(y).astype(jnp.float32)
    return logits[:, :height, :width]
