"""Tests of cowmix_jax/models: shapes, parameter counts against torchvision's, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from cowmix_jax import config_base, models
from cowmix_jax.models import conv
from cowmix_jax.models.resnet import ResNetEncoder

# torchvision parameter counts with the 1000-way classifier, minus that classifier.
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160}


def stage_channels(depth: int, width: int = 64) -> tuple[int, int, int, int]:
  """Output channels of conv2_x..conv5_x (He et al., Table 1): basic blocks (ResNet-18,
  34) keep the stage width, bottlenecks (50, 101) expand it 4 times."""
  expansion = 1 if depth < 50 else 4
  return tuple(width * 2**i * expansion for i in range(4))


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
  for (name, f), stride, channels in zip(features.items(), (4, 8, 16, 32),
                                         stage_channels(depth, 8)):
    assert f.shape == (2, 64 // stride, 96 // stride, channels), name


def _table_4_decoder_parameters(top: int, skips, classes: int) -> int:
  """Table 4's layer list by hand: the 1/32 features of ``top`` channels, the skips at
  1/16, 1/8 and 1/4 of ``skips`` channels."""
  def conv(k, cin, cout):
    return k * k * cin * cout + cout

  s16, s8, s4 = skips
  return (conv(3, top, 192) + conv(4, 192, 128) + conv(3, 128 + s16, 128) + conv(4, 128, 96)
          + conv(3, 96 + s8, 96) + conv(4, 96, 64) + conv(3, 64 + s4, 64) + conv(4, 64, 48)
          + conv(3, 48, 48) + conv(4, 48, 32) + conv(3, 32, 32) + conv(1, 32, classes))


def test_unet_decoder_matches_paper_table_4():
  """Decoder parameter count from Table 4's layer list, on the ResNet-50 encoder."""
  config = config_base.get_model_config(name="unet", depth=50, width=64, freeze_bn=True)
  model = models.build_model(config, num_classes=11)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  decoder = {k: v for k, v in shapes["params"].items() if k != "encoder"}
  assert _count(decoder) == _table_4_decoder_parameters(2048, (1024, 512, 256), 11)


def test_unet_on_efficientnet_lite_takes_its_skips_at_the_paper_strides():
  """The same Table 4 decoder, fed by Lite2's 1/32 head (1280 ch) and its 1/16, 1/8 and
  1/4 stage outputs (120, 48, 24 channels); the encoder is the whole EfficientNet-Lite."""
  config = config_base.get_model_config(name="unet", encoder="efficientnet_lite",
                                          encoder_variant="lite2", freeze_bn=True)
  model = models.build_model(config, num_classes=11)
  x = jnp.zeros((1, 96, 128, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
  decoder = {k: v for k, v in shapes["params"].items() if k != "encoder"}
  assert _count(decoder) == _table_4_decoder_parameters(1280, (120, 48, 24), 11)
  encoder = models.EfficientNetLite("lite2")
  encoder_shapes = jax.eval_shape(lambda: encoder.init(jax.random.PRNGKey(0), x))
  assert jax.tree.map(lambda a: a.shape, shapes["params"]["encoder"]) == \
      jax.tree.map(lambda a: a.shape, encoder_shapes["params"])
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 90, 120, 3))), shapes)
  assert logits.shape == (2, 90, 120, 11)


def test_resnet_unet_keeps_its_parameter_names():
  """Checkpoints of the ResNet U-Net written before encoders were selectable restore:
  the encoder is still ``encoder/stem_conv``, ``encoder/conv2_x_block0``, ... ."""
  config = config_base.get_model_config(name="unet", depth=18, width=8,
                                          decoder_widths=(8,) * 6)
  model = models.build_model(config, num_classes=3)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  assert sorted(shapes["params"]) == sorted(
      ["encoder", "conv_32", "up_16", "conv_16", "up_8", "conv_8", "up_4", "conv_4", "up_2",
       "conv_2", "up_1", "conv_1", "classifier"])
  assert sorted(shapes["params"]["encoder"]) == sorted(
      ["stem_conv", "stem_bn"] + [f"conv{s}_x_block{b}" for s in (2, 3, 4, 5) for b in (0, 1)])


@pytest.mark.parametrize("key,value,message", [
    ("encoder", "vit", r"config.model.encoder='vit': choose one of \['efficientnet_lite', "
                       r"'resnet'\]"),
    ("encoder_variant", "lite4", r"config.model.encoder_variant='lite4'"),
    ("width", 32, r"config.model.width=32 applies to ResNet encoders only"),
])
def test_bad_encoder_settings_name_the_key(key, value, message):
  config = config_base.get_model_config(name="unet", encoder="efficientnet_lite",
                                          encoder_variant="lite0", width=64)
  config[key] = value
  with pytest.raises(ValueError, match=message):
    models.build_model(config, num_classes=3)


def test_normalisation_auto_follows_the_encoder():
  config = config_base.get_model_config(name="unet", encoder="resnet", normalisation="auto")
  assert models.input_normalisation(config) == "imagenet"
  config.encoder = "efficientnet_lite"
  assert models.input_normalisation(config) == "efficientnet_lite"
  config.normalisation = "grey"
  assert models.input_normalisation(config) == "grey"


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


def test_efficientnet_lite_in_bfloat16_keeps_float32_parameters():
  """Traced only (no compilation): float32 parameters, bf16 feature maps and
  convolutions, float32 ImageNet logits."""
  x = jnp.zeros((1, 32, 32, 3))
  model = models.EfficientNetLite("lite0", dtype=jnp.bfloat16, imagenet_head=True)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(model.apply, variables, x)
  assert {out[name].dtype for name in ("stride_2", "stride_16", "stride_32")} == {
      jnp.dtype(jnp.bfloat16)}
  assert out["imagenet_logits"].dtype == jnp.float32
  assert "bf16" in jax.jit(model.apply).lower(variables, x).as_text()


def test_dilation_plans_by_hand():
  from cowmix_jax.models.resnet import stage_strides_and_dilations as plan
  assert plan(32, caffe=False) == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1, 1)]
  # torchvision: a dilated stage's first block keeps the previous dilation.
  assert plan(8, caffe=False) == [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
  assert plan(16, caffe=False) == [(1, 1, 1), (2, 1, 1), (2, 1, 1), (1, 1, 2)]
  # DeepLab v2 (caffe): every block of a dilated stage is dilated.
  assert plan(8, caffe=True) == [(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 4, 4)]
  with pytest.raises(ValueError, match="output stride must be 8, 16 or 32"):
    plan(4, caffe=False)


def _torch_style_max_pool(x, ceil_mode):
  """numpy reference: PyTorch MaxPool2d(3, 2, padding=1, ceil_mode) on [H, W]."""
  size = x.shape[0]
  if ceil_mode:
    out = -(-(size + 2 - 3) // 2) + 1
    if (out - 1) * 2 >= size + 1:
      out -= 1
  else:
    out = (size + 2 - 3) // 2 + 1
  padded = np.full((size + 6, size + 6), -np.inf)
  padded[1:size + 1, 1:size + 1] = x
  return np.array([[padded[2 * i:2 * i + 3, 2 * j:2 * j + 3].max() for j in range(out)]
                   for i in range(out)])


@pytest.mark.parametrize("size", [7, 8, 9, 160, 161])
def test_ceil_mode_max_pool_matches_pytorch_rounding(size):
  from cowmix_jax.models.resnet import max_pool_3x3_s2
  x = np.random.default_rng(size).normal(size=(size, size)).astype(np.float32)
  for ceil_mode in (False, True):
    got = np.asarray(max_pool_3x3_s2(jnp.asarray(x)[None, :, :, None], ceil_mode))[0, :, :, 0]
    np.testing.assert_array_equal(got, _torch_style_max_pool(x, ceil_mode))


def _param_count(model, shape):
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(shape))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def test_deeplab_v2_parameter_count_and_shapes():
  model = models.DeepLabV2(num_classes=21)
  # Caffe ResNet-101 without its classifier (torchvision's 44,549,160 - 2,049,000) and
  # four 3x3 2048 -> 21 convolutions with biases.
  assert _param_count(model, (1, 65, 65, 3)) == 44_549_160 - 2_049_000 + 4 * (9 * 2048 * 21 + 21)
  encoder = models.ResNetEncoder(101, output_stride=8, style="caffe")
  shapes = jax.eval_shape(lambda x: encoder.init_with_output(jax.random.PRNGKey(0), x)[0],
                          jnp.zeros((1, 321, 321, 3)))
  # 321 -> conv 161 -> ceil-mode pool 81 -> conv3_x 41, then dilated: 41.
  assert shapes["conv2_x"].shape == (1, 81, 81, 256)
  assert shapes["conv5_x"].shape == (1, 41, 41, 2048)
  tv = models.ResNetEncoder(50, output_stride=16)
  shapes = jax.eval_shape(lambda x: tv.init_with_output(jax.random.PRNGKey(0), x)[0],
                          jnp.zeros((1, 64, 96, 3)))
  assert shapes["conv5_x"].shape == (1, 4, 6, 2048)
  # Dilation adds no parameters: torchvision ResNet-50 without its classifier.
  assert _param_count(tv, (1, 64, 64, 3)) == 25_557_032 - 2_049_000
  logits = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                          jnp.zeros((2, 65, 97, 3)))
  assert logits.shape == (2, 65, 97, 21) and logits.dtype == jnp.float32


def test_deeplab_v2_sums_all_four_branches_unless_the_bug_is_asked_for():
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 64, 64, 3))
  model = models.DeepLabV2(num_classes=3, depth=18, width=8)
  variables = model.init(jax.random.PRNGKey(0), x)
  buggy = models.DeepLabV2(num_classes=3, depth=18, width=8, two_branch_bug=True)
  zeroed = jax.tree_util.tree_map_with_path(
      lambda path, p: p * 0 if any(getattr(k, "key", "") in ("aspp_2", "aspp_3") for k in path)
      else p, variables)
  # With the bug, branches 3 and 4 do not matter; without it, they do.
  np.testing.assert_allclose(buggy.apply(variables, x), buggy.apply(zeroed, x), atol=1e-6)
  np.testing.assert_allclose(buggy.apply(variables, x), model.apply(zeroed, x), atol=1e-6)
  assert not np.allclose(model.apply(variables, x), model.apply(zeroed, x), atol=1e-4)


def test_deeplab_v3plus_output_and_head():
  model = models.DeepLabV3Plus(num_classes=4, depth=18, width=8)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  logits = model.apply(variables, x)
  assert logits.shape == (2, 64, 64, 4)
  params = variables["params"]
  assert params["low_level"]["Conv_0"]["kernel"].shape == (1, 1, 8, 48)  # conv2_x of R18/8
  assert params["decoder_0"]["Conv_0"]["kernel"].shape == (3, 3, 256 + 48, 256)
  assert params["aspp"]["project"]["Conv_0"]["kernel"].shape == (1, 1, 5 * 256, 256)


@pytest.mark.parametrize("output_stride, aspp", [(8, {12, 24, 36}), (16, {6, 12, 18})])
def test_deeplab_v3plus_aspp_dilations_follow_the_output_stride(output_stride, aspp):
  """The dilations in the traced network: DeepLab v3+'s 6/12/18 at output stride 16,
  doubled at 8, besides the encoder's own (2 at 16; 2 and 4 at 8)."""
  model = models.DeepLabV3Plus(num_classes=4, depth=18, width=8,
                               output_stride=output_stride)
  x = jnp.zeros((1, 64, 64, 3))
  variables = model.init(jax.random.PRNGKey(0), x)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(variables)
  dilations = {eqn.params["rhs_dilation"][0] for eqn in jaxpr.eqns
               if eqn.primitive.name == "conv_general_dilated"}
  encoder = {1, 2} if output_stride == 16 else {1, 2, 4}
  assert dilations == aspp | encoder


def test_flops_and_parameter_report_against_hand_counts():
  import flax.linen as nn

  from cowmix_jax.models import summary

  class TwoConvs(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.Conv(8, (3, 3), padding=1, name="first")(x)
      return nn.Conv(4, (1, 1), name="second")(x)

  model = TwoConvs()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  assert summary.parameter_counts(variables["params"]) == {"first": 3 * 3 * 3 * 8 + 8,
                                                           "second": 8 * 4 + 4}
  # 2 FLOPs per multiply-add, per output pixel: 3x3x3 -> 8, then 8 -> 4.
  expected = 2 * 16 * 16 * (27 * 8 + 8 * 4)
  flops = summary.forward_flops(model, variables, (2, 16, 16, 3))
  assert abs(flops - expected) / expected < 0.05, (flops, expected)
  text = summary.report(model, variables, (1, 16, 16, 3))
  assert "total" in text and f"{3 * 3 * 3 * 8 + 8 + 36:,}" in text and "GFLOPs" in text



REMAT_MODELS = {
    "unet_resnet": dict(name="unet", depth=18, width=8, decoder_widths=(16, 16, 8, 8, 8, 8)),
    "unet_lite0": dict(name="unet", encoder="efficientnet_lite",
                       decoder_widths=(16, 16, 8, 8, 8, 8)),
    "deeplab_v2": dict(name="deeplab_v2", depth=18, width=8),
    "deeplab_v3plus": dict(name="deeplab_v3plus", depth=18, width=8, output_stride=16),
}
ENCODER_BLOCKS = {"unet_resnet": 8, "unet_lite0": 16, "deeplab_v2": 8, "deeplab_v3plus": 8}
REMAT_PRIMITIVES = ("remat2", "checkpoint")  # jax.checkpoint's primitive, by JAX version


def _remat_model(name: str, remat: bool):
  config = config_base.get_model_config(remat=remat, freeze_bn=False, **REMAT_MODELS[name])
  return models.build_model(config, 5)


def _training_loss_fn(model, images, labels):
  """``loss(params, batch_stats) -> (cross-entropy, new batch_stats)`` in training mode."""

  def loss_fn(params, batch_stats):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                  train=True, mutable=["batch_stats"])
    log_probs = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None], -1))
    return loss, updates["batch_stats"]

  return loss_fn


def _images_and_labels(size: int = 32):
  images = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
  labels = jax.random.randint(jax.random.PRNGKey(2), (2, size, size), 0, 5)
  return images, labels


@pytest.mark.parametrize("name", sorted(REMAT_MODELS))
def test_remat_checkpoints_every_encoder_block_of_every_model(name):
  """The backward pass of config.model.remat=True holds one jax.checkpoint per encoder
  block (ResNet-18: 8, EfficientNet-Lite0: 16), and none without it."""
  images, labels = _images_and_labels()
  for remat, expected in ((False, 0), (True, ENCODER_BLOCKS[name])):
    model = _remat_model(name, remat)
    variables = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), images[:1]))
    grad_fn = jax.grad(_training_loss_fn(model, images, labels), has_aux=True)
    jaxpr = jax.make_jaxpr(grad_fn)(variables["params"], variables["batch_stats"])
    checkpoints = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in REMAT_PRIMITIVES]
    assert len(checkpoints) == expected, (remat, [e.primitive.name for e in jaxpr.jaxpr.eqns])


@pytest.mark.parametrize("name", [
    "unet_resnet",
    pytest.param("unet_lite0", marks=pytest.mark.slow),  # 3 minutes of compiling on 2 cores
])
def test_remat_changes_no_parameter_loss_gradient_or_statistic(name):
  """config.model.remat recomputes the encoder's blocks in the backward pass: the
  parameter tree (so checkpoints), the loss, every gradient and the new BatchNorm
  statistics must be those of the plain network."""
  images, labels = _images_and_labels()
  results = []
  for remat in (False, True):
    model = _remat_model(name, remat)
    variables = model.init(jax.random.PRNGKey(0), images[:1])
    grad_fn = jax.jit(jax.value_and_grad(_training_loss_fn(model, images, labels),
                                         has_aux=True))
    (loss, stats), grads = grad_fn(variables["params"], variables["batch_stats"])
    results.append((variables, loss, grads, stats))
  (plain_vars, plain_loss, plain_grads, plain_stats), remat_results = results
  remat_vars, remat_loss, remat_grads, remat_stats = remat_results
  assert jax.tree.structure(plain_vars) == jax.tree.structure(remat_vars)
  for a, b in zip(jax.tree.leaves(plain_vars), jax.tree.leaves(remat_vars)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
  for plain, remat in ((plain_grads, remat_grads), (plain_stats, remat_stats)):
    assert jax.tree.structure(plain) == jax.tree.structure(remat)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * float(np.abs(a).max() + 1))
  assert any(float(np.abs(g).max()) > 0 for g in jax.tree.leaves(plain_grads["encoder"]))


@pytest.mark.parametrize("shape", [(2, 7, 9, 5), (1, 4, 4, 3)])
def test_transposed_conv_by_phases_equals_flax_conv_transpose(shape):
  """The U-Net's upsampling layer: the same initial parameters as nn.ConvTranspose(4x4,
  stride 2, SAME) under the same key, and the same outputs and gradients for any."""
  from cowmix_jax.models.unet import TransposedConv4x4

  x = jax.random.normal(jax.random.PRNGKey(3), shape)
  reference = nn.ConvTranspose(6, (4, 4), strides=(2, 2), padding="SAME")
  ours = TransposedConv4x4(6)
  initial = reference.init(jax.random.PRNGKey(0), x)
  for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(ours.init(jax.random.PRNGKey(0), x))):
    np.testing.assert_array_equal(a, b)
  variables = {"params": {"kernel": jax.random.normal(jax.random.PRNGKey(1), (4, 4, shape[-1], 6)),
                          "bias": jnp.arange(6.0)}}
  cotangent = jax.random.normal(jax.random.PRNGKey(2), shape[:1] + (2 * shape[1], 2 * shape[2], 6))
  results = []
  for module in (reference, ours):
    y, pullback = jax.vjp(lambda v, x, m=module: m.apply(v, x), variables, x)
    results.append((y, *pullback(cotangent)))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["unet_resnet", "deeplab_v2"])
def test_matmul_kernel_gradients_change_no_model_gradient(monkeypatch, name):
  """models.conv computes kernel gradients by matrix products on the CPU: with every
  convolution on that route, the loss and every gradient of a U-Net (strided, 1x1,
  transposed by phases) and a DeepLab v2 (dilated) are those of lax's own gradients."""
  images, labels = _images_and_labels()
  results = []
  for by_matmul in (False, True):
    monkeypatch.setattr(conv, "kernel_gradient_by_matmul", lambda *_, b=by_matmul: b)
    model = _remat_model(name, remat=False)
    variables = model.init(jax.random.PRNGKey(0), images[:1])
    loss_fn = _training_loss_fn(model, images, labels)
    jaxpr = str(jax.make_jaxpr(loss_fn)(variables["params"], variables["batch_stats"]))
    assert ("custom_vjp_call" in jaxpr) == by_matmul
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    results.append(grad_fn(variables["params"], variables["batch_stats"]))
  ((plain_loss, _), plain_grads), ((matmul_loss, _), matmul_grads) = results
  np.testing.assert_allclose(matmul_loss, plain_loss, rtol=1e-6)
  assert jax.tree.structure(plain_grads) == jax.tree.structure(matmul_grads)
  for a, b in zip(jax.tree.leaves(plain_grads), jax.tree.leaves(matmul_grads)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * float(np.abs(a).max() + 1))


# The feature maps each model decodes through UniMatch's channel dropout.
PERTURBED_FEATURES = {"unet_resnet": ("conv2_x", "conv3_x", "conv4_x", "conv5_x"),
                      "unet_lite0": ("stride_4", "stride_8", "stride_16", "stride_32"),
                      "deeplab_v2": ("conv5_x",), "deeplab_v3plus": ("conv2_x", "conv5_x")}


@pytest.mark.parametrize("name", sorted(REMAT_MODELS))
def test_feature_perturbation_pass_decodes_clean_and_channel_dropped_features(name):
  """With a feature_dropout_key, the first output is the plain prediction and the second
  is the prediction of the same network whose encoder returned drop_channels of the
  decoder's feature maps (done here by intercepting the encoder), for every model."""
  from cowmix_jax.models.feature_dropout import drop_channels

  model = _remat_model(name, remat=False)
  images, _ = _images_and_labels()
  variables = model.init(jax.random.PRNGKey(0), images)
  key = jax.random.PRNGKey(7)
  clean, perturbed = model.apply(variables, images, feature_dropout_key=key)

  def drop_encoder_features(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.name != "encoder" or context.method_name != "__call__":
      return out
    names = PERTURBED_FEATURES[name]
    return {**out, **drop_channels({n: out[n] for n in names}, key)}

  with nn.intercept_methods(drop_encoder_features):
    expected = model.apply(variables, images)
  np.testing.assert_allclose(clean, model.apply(variables, images), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(perturbed, expected, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(perturbed) - np.asarray(clean)).max() > 1e-3
