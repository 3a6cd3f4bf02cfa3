"""Tests of cowmix_jax/models/convert.py: PyTorch reference modules (written here, with
random weights and BatchNorm statistics) converted to Flax give the same outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the 'convert' extra (tests install it)")
from torch import nn as tnn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from cowmix_jax import models  # noqa: E402
from cowmix_jax.models import convert  # noqa: E402


class TorchBottleneck(tnn.Module):
  """torchvision's Bottleneck (stride on the 3x3), or Caffe's (stride on the first 1x1)."""
  expansion = 4

  def __init__(self, inplanes, planes, stride, downsample, dilation, caffe):
    super().__init__()
    s1, s3 = (stride, 1) if caffe else (1, stride)
    self.conv1 = tnn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride=s3, padding=dilation, dilation=dilation,
                            bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet(tnn.Module):
  """A ResNet-50/101 trunk like torchvision's (``replace_stride_with_dilation``) or like
  DeepLab v2's Caffe ResNet (ceil-mode pool, every block of a dilated layer dilated),
  with DeepLab v2's four-branch ASPP when ``aspp_classes`` is given."""

  def __init__(self, layers, output_stride=32, caffe=False, aspp_classes=None):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    self.maxpool = tnn.MaxPool2d(3, stride=2, padding=1, ceil_mode=caffe)
    self.inplanes, self.dilation, current = 64, 1, 4
    for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
      stride = 1 if index == 0 else 2
      previous = self.dilation
      if index > 0 and current >= output_stride:
        self.dilation, stride = self.dilation * 2, 1
      elif index > 0:
        current *= 2
      first = self.dilation if caffe else previous
      downsample = None
      if stride != 1 or self.inplanes != planes * 4:
        downsample = tnn.Sequential(
            tnn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
            tnn.BatchNorm2d(planes * 4))
      modules = [TorchBottleneck(self.inplanes, planes, stride, downsample, first, caffe)]
      self.inplanes = planes * 4
      modules += [TorchBottleneck(self.inplanes, planes, 1, None, self.dilation, caffe)
                  for _ in range(1, blocks)]
      setattr(self, f"layer{index + 1}", tnn.Sequential(*modules))
    if aspp_classes:
      self.layer5 = tnn.Module()
      self.layer5.conv2d_list = tnn.ModuleList(
          [tnn.Conv2d(2048, aspp_classes, 3, padding=r, dilation=r) for r in (6, 12, 18, 24)])
    self.aspp_classes = aspp_classes

  def forward(self, x):
    size = x.shape[2:]
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    if not self.aspp_classes:
      return x
    y = sum(conv(x) for conv in self.layer5.conv2d_list)  # all four branches
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def _randomise(module, seed=0):
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in module.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var") or name.endswith("bn3.weight"):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      else:
        tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator))
  return module.eval()


def _state_dict(module):
  return {k: v.numpy() for k, v in module.state_dict().items()}


def _compare(flax_out, torch_out):
  torch_out = torch_out.detach().numpy().transpose(0, 2, 3, 1)
  scale = np.abs(torch_out).max()
  np.testing.assert_allclose(np.asarray(flax_out), torch_out, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("depth,output_stride", [(50, 8), (50, 32), (101, 16)])
def test_torchvision_resnet_converts_exactly(depth, output_stride):
  layers = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
  reference = _randomise(TorchResNet(layers, output_stride), seed=depth)
  x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
  variables = convert.convert_state_dict(_state_dict(reference), "torchvision_resnet")
  encoder = models.ResNetEncoder(depth, freeze_bn=True, output_stride=output_stride)
  features = encoder.apply({"params": variables["params"]["encoder"],
                            "batch_stats": variables["batch_stats"]["encoder"]},
                           jnp.asarray(x.transpose(0, 2, 3, 1)), train=True)
  _compare(features["conv5_x"], reference(torch.from_numpy(x)))


def test_deeplab_v2_converts_exactly_and_counts_like_pytorch():
  reference = _randomise(TorchResNet((3, 4, 23, 3), 8, caffe=True, aspp_classes=21), seed=1)
  model = models.DeepLabV2(num_classes=21)
  x = np.random.default_rng(1).normal(size=(1, 3, 65, 65)).astype(np.float32)
  state = {("Scale." + k): v for k, v in _state_dict(reference).items()}  # Hung et al.'s keys
  variables = convert.convert_state_dict(state, "deeplab_v2")
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 65, 65, 3)))
  ours = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))
  assert ours == sum(p.numel() for p in reference.parameters())
  merged = convert.merge_pretrained(jax.tree.map(np.zeros_like, jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype), shapes)), variables)
  logits = model.apply(merged, jnp.asarray(x.transpose(0, 2, 3, 1)))
  _compare(logits, reference(torch.from_numpy(x)))


def test_mismatched_weights_are_listed(tmp_path):
  reference = _randomise(TorchResNet((3, 4, 6, 3)))
  variables = convert.convert_state_dict(_state_dict(reference), "torchvision_resnet")
  convert.save(variables, str(tmp_path / "r50.msgpack"))
  loaded = convert.load(str(tmp_path / "r50.msgpack"))
  model = models.ResNetEncoder(101)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  target = {"params": {"encoder": jax.tree.map(lambda s: np.zeros(s.shape), shapes["params"])},
            "batch_stats": {"encoder": jax.tree.map(lambda s: np.zeros(s.shape),
                                                    shapes["batch_stats"])}}
  # ResNet-50 weights fit the first blocks of a ResNet-101 but not conv4_x's count...
  merged = convert.merge_pretrained(target, loaded)
  assert merged["params"]["encoder"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
  # ...whereas a ResNet-18 does not have bottlenecks at all.
  small = models.ResNetEncoder(18)
  shapes = jax.eval_shape(small.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  target = {"params": {"encoder": jax.tree.map(lambda s: np.zeros(s.shape), shapes["params"])}}
  with pytest.raises(ValueError, match=r"(?s)99 unknown name\(s\) .*conv2_x_block0/Conv_2/kernel"
                                       r".*17 shape mismatch.*Conv_0/kernel: \(1, 1, 64, 64\) "
                                       r"in pretrained, \(3, 3, 64, 64\) in the model"):
    convert.merge_pretrained(target, {"params": loaded["params"]})
  with pytest.raises(ValueError, match="have no place in the torchvision_resnet layout"):
    convert.convert_state_dict({"head.weight": np.zeros(3)}, "torchvision_resnet")


def test_pretrained_weights_load_into_the_encoder_with_a_smaller_learning_rate(tmp_path,
                                                                               tiny_config):
  from flax.traverse_util import flatten_dict

  from cowmix_jax import train

  reference = _randomise(TorchResNet((3, 4, 6, 3)), seed=3)
  converted = convert.convert_state_dict(_state_dict(reference), "torchvision_resnet")
  convert.save(converted, str(tmp_path / "r50.msgpack"))
  tiny_config.model.depth, tiny_config.model.width = 50, 64
  tiny_config.model.pretrained = str(tmp_path / "r50.msgpack")
  tiny_config.learning_rate = 1e-3
  model = models.build_model(tiny_config.model, 6)
  variables, tx = train.initial_variables_and_optimizer(tiny_config, model, (1, 32, 32, 3))
  flat = flatten_dict(variables["params"])
  for key, value in flatten_dict(converted["params"]).items():
    np.testing.assert_array_equal(flat[key], value)
  np.testing.assert_array_equal(flatten_dict(variables["batch_stats"])[
      ("encoder", "stem_bn", "mean")], converted["batch_stats"]["encoder"]["stem_bn"]["mean"])
  # One Adam step on unit gradients moves every weight by its learning rate.
  updates, _ = tx.update(jax.tree.map(np.ones_like, variables["params"]),
                         tx.init(variables["params"]), variables["params"])
  for key, update in flatten_dict(updates).items():
    expected = 1e-4 if key[0] == "encoder" else 1e-3
    np.testing.assert_allclose(np.asarray(update), -expected, rtol=1e-3)
  tiny_config.model.pretrained = str(tmp_path / "missing.msgpack")
  with pytest.raises(FileNotFoundError, match="config.model.pretrained=.*missing.msgpack"):
    train.initial_variables_and_optimizer(tiny_config, model, (1, 32, 32, 3))
