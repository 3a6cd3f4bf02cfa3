"""Test setup: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402  (after the flags)
import pytest  # noqa: E402

from cowmix_jax.config_base import get_base_config  # noqa: E402


@pytest.fixture
def tiny_config():
  """A config with a tiny model and synthetic 32x32 images, for fast tests."""
  config = get_base_config()
  config.data = dict(name="synthetic", seed=0, image_size=32, num_train=32,
                     num_validation=8, num_labelled=8)
  config.batch_size = 8
  config.unlabelled_batch_size = 16
  config.eval_batch_size = 8
  config.learning_rate = 1e-3
  config.mask.cow_sigma_range = (1.0, 4.0)
  config.model.depth = 18
  config.model.width = 4
  config.model.decoder_widths = (8, 8, 8, 8, 8, 8)
  config.num_train_steps = 2
  config.log_every = 1
  return config
