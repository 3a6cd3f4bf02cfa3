"""Tests of cowmix_jax/models: shapes, parameter counts against torchvision's, registry."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cowmix_jax import models
from cowmix_jax.models.resnet import ResNetEncoder, stage_channels

# torchvision parameter counts with the 1000-way classifier, minus that classifier.
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_encoder_parameter_count_matches_torchvision(depth):
  shapes = jax.eval_shape(lambda: ResNetEncoder(depth).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  classifier = stage_channels(depth)[-1] * 1000 + 1000
  assert _count(shapes["params"]) == TORCHVISION_PARAMS[depth] - classifier


@pytest.mark.parametrize("depth", [18, 50])
def test_encoder_feature_strides_and_channels(depth):
  encoder = ResNetEncoder(depth, width=8)
  x = jnp.zeros((2, 64, 96, 3))
  features, _ = encoder.init_with_output(jax.random.PRNGKey(0), x)
  for (name, f), stride, channels in zip(features.items(), (4, 8, 16, 32), stage_channels(depth, 8)):
    assert f.shape == (2, 64 // stride, 96 // stride, channels), name


def test_unet_decoder_matches_paper_table_4():
  """Decoder parameter count from Table 4's layer list, on the ResNet-50 encoder."""
  config = ml_collections.ConfigDict(dict(name="unet", depth=50, width=64, freeze_bn=True))
  model = models.build_model(config, num_classes=11)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  conv = lambda k, cin, cout: k * k * cin * cout + cout
  expected = (conv(3, 2048, 192) + conv(4, 192, 128) + conv(3, 128 + 1024, 128) + conv(4, 128, 96)
              + conv(3, 96 + 512, 96) + conv(4, 96, 64) + conv(3, 64 + 256, 64) + conv(4, 64, 48)
              + conv(3, 48, 48) + conv(4, 48, 32) + conv(3, 32, 32) + conv(1, 32, 11))
  decoder = {k: v for k, v in shapes["params"].items() if k != "encoder"}
  assert _count(decoder) == expected


def test_unet_output_shape_and_frozen_bn(tiny_config):
  tiny_config.model.freeze_bn = True
  model = models.build_model(tiny_config.model, num_classes=5)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 32, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (2, 64, 32, 5)
  # Frozen BN: training does not change the statistics and matches inference.
  for old, new in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates)):
    np.testing.assert_array_equal(old, new)
  np.testing.assert_allclose(logits, model.apply(variables, x, train=False), rtol=1e-5, atol=1e-6)


def test_unet_pads_odd_sizes_and_crops_the_logits_back(tiny_config):
  model = models.build_model(tiny_config.model, num_classes=5)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 41, 50, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  logits = model.apply(variables, x)
  assert logits.shape == (1, 41, 50, 5)
  # Reference: pad by hand to 64x64 with the mean colour (0) and crop.
  padded = jnp.pad(x, ((0, 0), (0, 23), (0, 14), (0, 0)))
  np.testing.assert_allclose(logits, model.apply(variables, padded)[:, :41, :50],
                             rtol=1e-5, atol=1e-6)


def test_unknown_model_name_lists_choices(tiny_config):
  tiny_config.model.name = "segformer"
  with pytest.raises(ValueError, match="unet"):
    models.build_model(tiny_config.model, 3)


def test_bfloat16_computes_in_bf16_and_keeps_float32_parameters(tiny_config):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))
  full = models.build_model(tiny_config.model, num_classes=5)
  variables = full.init(jax.random.PRNGKey(0), x)
  tiny_config.model.dtype = "bfloat16"
  mixed = models.build_model(tiny_config.model, num_classes=5)
  mixed_variables = mixed.init(jax.random.PRNGKey(0), x)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(mixed_variables)):
    assert b.dtype == jnp.float32 and a.shape == b.shape
  logits = mixed.apply(variables, x)
  reference = full.apply(variables, x)
  assert logits.dtype == jnp.float32
  error = np.abs(np.asarray(logits) - np.asarray(reference)).max()
  assert 0 < error < 0.05 * np.abs(np.asarray(reference)).max() + 1e-3
  hlo = jax.jit(mixed.apply).lower(variables, x).as_text()
  assert "bf16" in hlo and "convolution" in hlo
  tiny_config.model.dtype = "float16"
  with pytest.raises(ValueError, match="config.model.dtype='float16'"):
    models.build_model(tiny_config.model, 5)
