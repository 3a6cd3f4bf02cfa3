"""Tests of configs/: every dataset config loads with the paper's settings, and the
Pascal and Cityscapes configs train 2 steps with U-Net and with DeepLab v2."""

import importlib.util
import os

import pytest

from cowmix_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, argument=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if argument is None else module.get_config(argument)


def test_paper_settings():
  camvid = load_config("camvid")
  assert (camvid.data.num_labelled, camvid.batch_size, camvid.learning_rate) == (30, 1, 1e-4)
  assert tuple(camvid.mask.cow_sigma_range) == (4.0, 16.0)
  pascal = load_config("pascal")
  assert tuple(pascal.data.augment.crop_size) == (321, 321) and pascal.batch_size == 10
  assert (tuple(pascal.data.augment.scale_range), pascal.data.augment.scale_step) == ((0.5, 1.5), 0.1)
  deeplab = load_config("pascal", "deeplab_v2")
  assert (deeplab.model.name, deeplab.model.depth, deeplab.learning_rate) == ("deeplab_v2", 101, 1e-5)
  assert deeplab.model.normalisation == "caffe" and not deeplab.model.aspp_two_branch_bug
  cityscapes = load_config("cityscapes", "deeplab_v2")
  assert cityscapes.batch_size == 2 and cityscapes.data.builder_config == "half_majority"
  assert tuple(cityscapes.mask.cow_sigma_range) == (8.0, 32.0)
  with pytest.raises(ValueError, match="configs/pascal.py:pspnet: choose unet or deeplab_v2"):
    load_config("pascal", "pspnet")


@pytest.mark.slow  # minutes of CPU: run by .ci/run after the default suite
@pytest.mark.parametrize("name,model", [("pascal", "unet"), ("pascal", "deeplab_v2"),
                                        ("cityscapes", "unet"), ("cityscapes", "deeplab_v2")])
def test_two_training_steps_on_a_tiny_input(name, model, tmp_path, tiny_config):
  config = load_config(name, model)
  config.data = tiny_config.data  # synthetic 32x32 instead of the real dataset
  config.data.data_dir = str(tmp_path / "tfds")
  config.model.depth, config.model.width = 18, 4
  if model == "unet":
    config.model.decoder_widths = (8, 8, 8, 8, 8, 8)
  config.batch_size, config.unlabelled_batch_size, config.eval_batch_size = 2, 2, 8
  config.num_devices = 1
  config.num_train_steps = 2
  config.mask.cow_sigma_range = (1.0, 4.0)
  results = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert results["step"] == 2 and 0.0 <= results["miou"] <= 1.0
