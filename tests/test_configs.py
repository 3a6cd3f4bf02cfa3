"""Tests of configs/: every dataset config loads with the paper's settings, the Pascal
and Cityscapes configs train 2 steps with U-Net and with DeepLab v2, and the CPU-scale
CamVid config trains on shrunk images but is scored on the full-resolution labels."""

import os

import numpy as np
import pytest
from PIL import Image

from cowmix_jax import evaluate, train

from conftest import SHARED_CAMVID, load_config


def test_paper_settings():
  camvid = load_config("camvid")
  assert (camvid.data.num_labelled, camvid.batch_size, camvid.learning_rate) == (30, 1, 1e-4)
  assert tuple(camvid.mask.cow_sigma_range) == (4.0, 16.0)
  pascal = load_config("pascal")
  assert tuple(pascal.data.augment.crop_size) == (321, 321) and pascal.batch_size == 10
  assert (tuple(pascal.data.augment.scale_range), pascal.data.augment.scale_step) == (
      (0.5, 1.5), 0.1)
  deeplab = load_config("pascal", "deeplab_v2")
  assert (deeplab.model.name, deeplab.model.depth, deeplab.learning_rate) == (
      "deeplab_v2", 101, 1e-5)
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


@pytest.mark.parametrize("name", ["camvid_cpu", "camvid_cpu_random_init"])
def test_cpu_scale_camvid_is_the_paper_protocol_shrunk_by_one_factor(name):
  paper, cpu = load_config("camvid"), load_config(name)
  factor = cpu.data.downscale
  assert factor == 4 and cpu.data.num_labelled == paper.data.num_labelled == 30
  assert tuple(cpu.mask.cow_sigma_range) == tuple(s / factor for s in paper.mask.cow_sigma_range)
  assert cpu.aug_consistency.translate_pixels == paper.aug_consistency.translate_pixels / factor
  assert tuple(cpu.data.eval_canvas) == tuple(paper.data.eval_canvas)
  # Whole shrunk images, as in the paper: the crop holds the 120x90 image.
  assert tuple(c * factor for c in cpu.data.augment.crop_size) == tuple(
      paper.data.augment.crop_size)
  for key in ("cons_weight", "teacher_alpha", "method"):
    assert cpu[key] == paper[key], key
  assert cpu.confidence == paper.confidence and cpu.data.eval_split == "validation"
  if name == "camvid_cpu_random_init":  # the first protocol, as its grid ran
    assert cpu.learning_rate == 1e-3  # measured: 1e-4 is too slow from a random init
    assert (cpu.model.encoder, cpu.model.depth, cpu.model.width) == ("resnet", 18, 32)
    assert not cpu.model.freeze_bn and cpu.mask.cow_canvas_margin_sigmas == 0
    assert (cpu.batch_size, cpu.num_train_steps, cpu.num_epochs) == (4, 3500, 0)
    return
  # The paper's regime: pretrained encoder, frozen BatchNorm, batch 1, epochs.
  assert (cpu.model.encoder, cpu.model.pretrained) == ("efficientnet_lite", "efficientnet_lite0")
  assert cpu.model.freeze_bn and cpu.batch_size == paper.batch_size == 1
  assert cpu.mask.cow_canvas_margin_sigmas > 0
  assert paper.num_epochs == 300 and 0 < cpu.num_epochs < 300


@pytest.mark.slow  # CamVid preparation, two steps and two evaluations of 101 images
@pytest.mark.skipif(not os.path.isdir(SHARED_CAMVID), reason="needs ../shared/data/camvid")
def test_cpu_scale_camvid_trains_small_and_scores_full_resolution_labels(tmp_path, monkeypatch):
  monkeypatch.setenv("COWMIX_JAX_CACHE", str(tmp_path / "cache"))  # the converted weights
  config = load_config("camvid_cpu")
  config.data.manual_dir = SHARED_CAMVID
  config.data.data_dir = str(tmp_path / "tfds")
  config.num_epochs, config.eval_every_epochs, config.num_train_steps = 0, 0, 2
  results = train.train_and_evaluate(config, str(tmp_path / "work"))
  assert results["num_labelled"] == 30 and results["split"] == "validation"
  scored = evaluate.evaluate_checkpoint(config, str(tmp_path / "work"))
  assert scored["miou"] == pytest.approx(results["miou"])
  # Every non-void pixel of the 480x360 val labels is scored, read here with PIL.
  labels = [np.asarray(Image.open(os.path.join(SHARED_CAMVID, "valannot", name)))
            for name in os.listdir(os.path.join(SHARED_CAMVID, "valannot"))]
  assert all(label.shape == (360, 480) for label in labels)
  assert np.sum(scored["confusion"]) == sum(int(np.sum(label < 11)) for label in labels)
