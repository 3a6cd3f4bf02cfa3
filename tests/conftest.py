"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere."""

import json
import os
import pathlib
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No test reaches the internet: named weights come from the cache or fail at once (the
# download test serves its file from a server on the loopback address).
os.environ["COWMIX_JAX_OFFLINE"] = "1"
# One persistent XLA compilation cache for every test process and the runs they start:
# the suite compiles the same tiny models and steps many times (a repeated subprocess
# run drops from about 110 s to 40 s). Compiled programs are the same either way.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"cowmix_jax_tests_xla_cache_{os.getuid()}"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from cowmix_jax import config_base  # noqa: E402
from cowmix_jax.config_base import get_base_config, get_data_config  # noqa: E402
from cowmix_jax.data import synthetic  # noqa: E402

# Start JAX's CPU backend now, with the 8 devices: a test that empties XLA_FLAGS for its
# subprocesses (monkeypatch) would otherwise leave a worker whose first JAX call comes
# during that test with 1 device, and the 8-device tests after it failing.
assert len(jax.devices()) == 8, jax.devices()

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CAMVID = os.path.join(REPO, os.pardir, "shared", "data", "camvid")


# A synthetic run small enough for a subprocess test: 32x32 images, a 4-wide ResNet-18.
TINY_RUN = {"data.image_size": "32", "data.num_train": "16", "data.num_validation": "8",
            "data.num_labelled": "4", "batch_size": "2", "unlabelled_batch_size": "2",
            "eval_batch_size": "4", "model.width": "4",
            "model.decoder_widths": "(8,8,8,8,8,8)", "confidence.mode": "none",
            "data.eval_canvas": "(32,32)", "data.augment.crop_size": "(32,32)"}


def tiny_flags(settings: dict) -> list[str]:
  """``--config.KEY=VALUE`` flags of TINY_RUN updated by ``settings``."""
  return [f"--config.{key}={value}" for key, value in {**TINY_RUN, **settings}.items()]


def free_port() -> int:
  """A TCP port on localhost that is free now (for a coordinator over loopback)."""
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def load_config(name, argument=None):
  """``configs/<name>.py``'s ``get_config([argument])``."""
  path = os.path.join(REPO, "configs", f"{name}.py")
  return config_base.load_config_file(path if argument is None else f"{path}:{argument}")


def num_classes_of_run(workdir) -> int:
  """How many classes the synthetic run in ``workdir`` trained on (its task's, from the
  config.json the run saved): what a template for its checkpoints must be built with."""
  saved = json.loads((pathlib.Path(workdir) / "config.json").read_text())
  return len(synthetic.TASKS[saved["data"].get("task", "shapes")][1])


@pytest.fixture
def tiny_config():
  """A config with a tiny model and synthetic 32x32 images, for fast tests."""
  return make_tiny_config()


def make_tiny_config():
  config = get_base_config()
  config.data = get_data_config(
      "synthetic", seed=0, image_size=32, num_train=32, num_validation=8, num_labelled=8,
      eval_canvas=(32, 32), augment=dict(crop_size=(32, 32)))
  config.batch_size = 8
  config.unlabelled_batch_size = 16
  config.eval_batch_size = 8
  config.learning_rate = 1e-3
  config.mask.cow_sigma_range = (1.0, 4.0)
  config.model.depth = 18
  config.model.width = 4
  config.model.decoder_widths = (8, 8, 8, 8, 8, 8)
  config.model.normalisation = "grey"
  config.num_train_steps = 2
  config.log_every = 1
  return config


@pytest.fixture
def synthetic_batch():
  """``make(config, seed) -> batch``: a training batch rendered in memory (no tfds)."""

  def make(config, seed=0):
    size = config.data.image_size

    def render(split, count):
      pairs = [synthetic.render_example(seed, split, i, size) for i in range(count)]
      images = np.stack([p[0] for p in pairs]).astype(np.float32)
      return (images - 127.5) / 63.75, np.stack([p[1] for p in pairs]).astype(np.int32)

    images, labels = render("train", config.batch_size)
    unlabelled, _ = render("validation", config.unlabelled_batch_size)
    return {"image": images, "label": labels, "unlabelled_image": unlabelled,
            "unlabelled_valid": np.ones(unlabelled.shape[:3], np.float32)}

  return make


def write_png(path, array, palette=None):
  """Writes uint8 ``array`` ([H, W] or [H, W, 3]) as a PNG (a palette PNG if given)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  array = np.asarray(array, np.uint8)
  if palette is None:
    image = Image.fromarray(array)
  else:
    image = Image.new("P", (array.shape[1], array.shape[0]))
    image.putdata(array.ravel().tolist())
    image.putpalette(palette)
  image.save(path)


@pytest.fixture(scope="session")
def synthetic_builder(tmp_path_factory):
  """The synthetic dataset (24 train, 8 validation images of 32 px), prepared once."""
  from cowmix_jax.data import builders

  return builders.prepare(get_data_config(
      "synthetic", seed=0, image_size=32, num_train=24, num_validation=8,
      data_dir=str(tmp_path_factory.mktemp("tfds"))))


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """A tiny synthetic CowMix run of 4 steps: (config, workdir, the results it printed)."""
  from cowmix_jax import train

  root = tmp_path_factory.mktemp("trained")
  config = make_tiny_config()
  config.data.data_dir = str(root / "tfds")
  config.num_train_steps = 4
  config.eval_batch_size = 8
  results = train.train_and_evaluate(config, str(root / "work"))
  return config, str(root / "work"), results


@pytest.fixture
def fake_bucket(tmp_path):
  """``gs://bucket/...`` served from ``tmp_path/bucket`` through etils.epath's own test
  mock (no real cloud storage offline): whatever the code under test opens, lists,
  creates or renames by a gs:// path must go through epath to land there. Yields the
  local directory. (orbax's array writes go through TensorStore, which this cannot fake.)"""
  from etils import epath

  root = tmp_path / "bucket"
  root.mkdir()

  def local(path):
    text = os.fspath(path)
    return str(root / text[len("gs://bucket/"):]) if text.startswith("gs://bucket/") else text

  def one_path(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def two_paths(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  names = ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
           "rmtree", "stat", "walk")
  # With TensorFlow installed, epath sends gs:// to tf.io.gfile ahead of the mocked
  # backend; pretend it is not, so that the mock serves the bucket.
  from unittest import mock
  with mock.patch.object(epath.gpath, "_is_tf_installed", lambda: False), \
      epath.testing.mock_epath(**{name: one_path for name in names}, copy=two_paths,
                               rename=two_paths, replace=two_paths):
    yield root
