"""Model registry: ``config.model.name`` -> a Flax module.

Each builder takes the model config and the number of classes: ``unet`` (the paper's
Table 4, on a ResNet or an EfficientNet-Lite encoder: ``config.model.encoder``),
``deeplab_v2`` (Caffe-style ResNet-101 at output stride 8, four-branch ASPP) and
``deeplab_v3plus``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from cowmix_jax.models import efficientnet_lite
from cowmix_jax.models.deeplab import DeepLabV2, DeepLabV3Plus
from cowmix_jax.models.efficientnet_lite import EfficientNetLite
from cowmix_jax.models.resnet import ResNetEncoder
from cowmix_jax.models.unet import ENCODER_SKIPS, UNet
from cowmix_jax.registry import Registry

ModelBuilder = Callable[[ml_collections.ConfigDict, int], nn.Module]
# ``@MODELS.register("name")`` on a function ``(model config, num_classes) -> module``.
MODELS: Registry[ModelBuilder] = Registry("config.model.name", "models")
register = MODELS.register


def _common_args(config: ml_collections.ConfigDict, num_classes: int) -> dict:
  """The arguments every model takes, from the model config."""
  return dict(num_classes=num_classes, depth=config.depth, width=config.width,
              freeze_bn=config.freeze_bn, dtype=compute_dtype(config), remat=config.remat)


def check_encoder(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key when ``config.model.encoder`` (and, for
  EfficientNet-Lite, ``encoder_variant`` and ``width``) cannot be built."""
  encoder = config.encoder
  if encoder not in ENCODER_SKIPS:
    raise ValueError(f"config.model.encoder={encoder!r}: choose one of {sorted(ENCODER_SKIPS)}")
  if encoder != "efficientnet_lite":
    return
  variant = config.encoder_variant
  if variant not in efficientnet_lite.VARIANTS:
    raise ValueError(f"config.model.encoder_variant={variant!r}: EfficientNet-Lite variants "
                     f"are {sorted(efficientnet_lite.VARIANTS)}")
  if config.width != 64:
    raise ValueError(f"config.model.width={config.width} applies to ResNet encoders only: "
                     f"EfficientNet-Lite's widths are fixed by encoder_variant (leave width "
                     f"at 64)")


@register("unet")
def _build_unet(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  check_encoder(config)
  return UNet(**_common_args(config, num_classes),
              decoder_widths=tuple(config.decoder_widths),
              encoder=config.encoder,
              encoder_variant=config.encoder_variant)


@register("deeplab_v2")
def _build_deeplab_v2(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return DeepLabV2(**_common_args(config, num_classes),
                   two_branch_bug=config.aspp_two_branch_bug)


@register("deeplab_v3plus")
def _build_deeplab_v3plus(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return DeepLabV3Plus(**_common_args(config, num_classes),
                       output_stride=config.output_stride)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ml_collections.ConfigDict):
  """``config.model.dtype``: float32, or bfloat16 for mixed precision (the parameters and
  the optimiser stay float32; the logits are returned as float32)."""
  name = config.dtype
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype={name!r}: choose one of {sorted(DTYPES)}")
  return DTYPES[name]


# The input normalisation that "auto" stands for, by encoder (DeepLab v2's Caffe weights
# set "caffe" explicitly: configs/*.py through config_base.set_deeplab_v2).
ENCODER_NORMALISATION = {"resnet": "imagenet", "efficientnet_lite": "efficientnet_lite"}


def input_normalisation(config: ml_collections.ConfigDict) -> str:
  """``config.model.normalisation``, with ``auto`` resolved by the encoder: ImageNet
  mean and std for ResNets, ``(pixel - 127) / 128`` for EfficientNet-Lite (the values
  its ImageNet weights were trained with)."""
  name = config.normalisation
  if name != "auto":
    return name
  encoder = config.encoder
  if encoder not in ENCODER_NORMALISATION:
    raise ValueError(f"config.model.encoder={encoder!r}: choose one of "
                     f"{sorted(ENCODER_NORMALISATION)}")
  return ENCODER_NORMALISATION[encoder]


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds the model named by ``config.name`` (the model config)."""
  return MODELS.get(config.name)(config, num_classes)


__all__ = ["build_model", "register", "MODELS", "input_normalisation",
           "ResNetEncoder", "EfficientNetLite", "UNet", "DeepLabV2", "DeepLabV3Plus"]
