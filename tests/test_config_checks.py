"""Tests of cowmix_jax/config_checks.py: every bad key named at once before any work,
epochs turned into steps, the mesh and the batches it can share; and of the defaults a
saved config is completed with (config_base.with_defaults)."""

import json
import re

import pytest

from cowmix_jax import checkpoints, config_base, config_checks

from conftest import load_config


def test_epochs_count_passes_over_the_training_split_at_the_labelled_batch(tiny_config):
  """The paper's CamVid: 367 images at batch 1, 300 epochs = 110,100 steps."""
  tiny_config.batch_size, tiny_config.num_epochs = 1, 300
  config_checks.resolve_training_length(tiny_config, 367)
  assert tiny_config.num_train_steps == 110_100 and tiny_config.eval_every == 0
  tiny_config.batch_size, tiny_config.num_epochs, tiny_config.eval_every_epochs = 4, 10, 0.5
  config_checks.resolve_training_length(tiny_config, 367)
  assert tiny_config.num_train_steps == round(10 * 367 / 4) == 918
  assert tiny_config.eval_every == round(0.5 * 367 / 4) == 46
  tiny_config.num_epochs, tiny_config.eval_every_epochs = 0, 0
  tiny_config.num_train_steps, tiny_config.eval_every = 123, 7
  config_checks.resolve_training_length(tiny_config, 367)
  assert (tiny_config.num_train_steps, tiny_config.eval_every) == (123, 7)
  tiny_config.num_epochs = -1
  with pytest.raises(ValueError, match="config.num_epochs=-1"):
    config_checks.resolve_training_length(tiny_config, 367)


def test_a_step_count_the_epochs_would_replace_is_refused_with_the_fix(tiny_config):
  """Before: --config.num_train_steps=3000 on a config with num_epochs > 0 trained for
  the epochs' length without a word (and eval_every under eval_every_epochs)."""
  tiny_config.num_epochs, tiny_config.eval_every_epochs = 300, 0
  tiny_config.num_train_steps, tiny_config.eval_every = 3000, 500
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.check_overrides_take_effect(tiny_config, ["num_train_steps", "eval_every"])
  assert str(error.value) == (
      "--config.num_train_steps=3000 has no effect: config.num_epochs=300 sets the length "
      "in epochs and wins; add --config.num_epochs=0 to count in steps (or set "
      "--config.num_epochs)")
  config_checks.check_overrides_take_effect(tiny_config, ["eval_every", "seed"])  # 0 epochs
  tiny_config.num_epochs = 0  # --config.num_epochs=0 given too: the steps count
  config_checks.check_overrides_take_effect(tiny_config, ["num_train_steps", "num_epochs"])


def _apply_overrides(config, message):
  """The ``--config.KEY=VALUE`` overrides an error suggests, applied to ``config``."""
  for key, value in re.findall(r"--config\.(\w+)=(-?\d+)", message):
    config[key] = int(value)


def test_mesh_size_takes_every_device_or_the_configured_number(tiny_config):
  tiny_config.num_devices = -1
  assert config_checks.mesh_size(tiny_config, 8, 1) == 8  # batches 8, 16, 8
  tiny_config.num_devices = 2
  assert config_checks.mesh_size(tiny_config, 8, 1) == 2


def test_batches_devices_cannot_share_are_rejected_with_the_overrides_that_work():
  # configs/cityscapes.py (one device, batch 1) as launch/slurm_gpu.sbatch runs it: 16
  # processes of one GPU each.
  config = load_config("cityscapes")
  with pytest.raises(ValueError) as error:
    config_checks.mesh_size(config, 16, 16)
  message = str(error.value)
  assert ("--config.num_devices=-1 --config.batch_size=16 --config.unlabelled_batch_size=32 "
          "--config.eval_batch_size=16") in message
  _apply_overrides(config, message)
  assert config_checks.mesh_size(config, 16, 16) == 16
  # One process, a mesh of 2 of its 8 devices and an odd batch: the two training batches
  # grow by one factor (keeping their 3 : 4 ratio), the rest stays.
  config = load_config("cityscapes")
  config.num_devices, config.batch_size, config.unlabelled_batch_size = 2, 3, 4
  config.eval_batch_size = 2
  with pytest.raises(ValueError, match=r"Use: --config.batch_size=6 "
                     r"--config.unlabelled_batch_size=8 \(") as error:
    config_checks.mesh_size(config, 8, 1)
  _apply_overrides(config, str(error.value))
  assert config_checks.mesh_size(config, 8, 1) == 2
  config.num_devices = 9
  with pytest.raises(ValueError, match="config.num_devices=9 but 8 devices are visible"):
    config_checks.mesh_size(config, 8, 1)


def test_every_bad_key_is_named_in_one_error(tiny_config):
  tiny_config.method = "cowmixx"
  tiny_config.teacher_alpha = 1.5
  tiny_config.prefetch_batches = -1
  tiny_config.mask.cowmix_p_range = (0.5, 1.5)
  tiny_config.model.dtype = "float16"
  tiny_config.data.name = "kitti"
  tiny_config.batch_size = 3
  with pytest.raises(ValueError) as error:
    config_checks.validate_config(tiny_config, device_count=2)
  lines = str(error.value).splitlines()
  assert lines[0] == "7 settings cannot work:"
  expected = ["config.method='cowmixx': choose one of", "config.teacher_alpha=1.5 must be",
              "config.prefetch_batches=-1 must be in [0, 64]",
              "config.mask.cowmix_p_range=(0.5, 1.5)", "config.model.dtype='float16'",
              "config.data.name='kitti'", "config.batch_size=3 is not a positive multiple"]
  for line, start in zip(lines[1:], expected, strict=True):
    assert line.startswith(f"  - {start}"), (line, start)


def test_one_bad_key_is_reported_alone_and_a_good_config_passes(tiny_config):
  config_checks.validate_config(tiny_config, device_count=1)
  for name in ("folder", "camvid_cpu", "synthetic"):  # data's auto settings resolve later
    config = load_config(name)
    config_checks.resolve_batches(config, "cpu")  # as training does first
    config_checks.validate_config(config, device_count=1)
  tiny_config.mask.cow_sigma_range = (8.0, 2.0)
  with pytest.raises(ValueError, match=r"^config.mask.cow_sigma_range=\(8.0, 2.0\): the "
                     r"smallest sigma is larger than the largest$"):
    config_checks.validate_config(tiny_config, device_count=1)
  tiny_config.mask.cow_sigma_range = (2.0, 8.0)
  tiny_config.method = "fixmatch"
  tiny_config.strong_blur_sigma_range = (0.0, 2.0)
  with pytest.raises(ValueError, match=r"^config.strong_blur_sigma_range=\(0.0, 2.0\): "
                     r"expected \(low, high\)"):
    config_checks.validate_config(tiny_config, device_count=1)


def test_a_saved_config_without_newer_keys_reads_with_their_defaults(tmp_path, tiny_config):
  """A run saved before a key existed: the key reads as its default, and restarting the
  run with the default is not a difference."""
  saved = json.loads(tiny_config.to_json_best_effort())
  del saved["mask"]["cow_canvas_margin_sigmas"], saved["model"]["output_stride"]
  saved["model"]["width"] = 4  # a saved value wins over the default
  (tmp_path / checkpoints.CONFIG_FILE).write_text(json.dumps(saved))
  (tmp_path / checkpoints.LATEST / "10").mkdir(parents=True)  # a run to continue
  restored = checkpoints.load_config(str(tmp_path))
  base = config_base.get_base_config()
  assert restored.mask.cow_canvas_margin_sigmas == base.mask.cow_canvas_margin_sigmas
  assert restored.model.output_stride == base.model.output_stride
  assert restored.model.width == 4 and restored.data.task == tiny_config.data.task
  tiny_config.model.width = 4
  assert checkpoints.config_differences(tiny_config, str(tmp_path)) == []
  tiny_config.mask.cow_canvas_margin_sigmas = 0.0
  assert checkpoints.config_differences(tiny_config, str(tmp_path)) == [
      f"  mask.cow_canvas_margin_sigmas: {base.mask.cow_canvas_margin_sigmas!r} in the "
      f"workdir, now 0.0"]


def test_frozen_batchnorm_without_weights_is_refused_with_the_fix(tiny_config):
  """Frozen BatchNorm keeps its initial statistics: random ones make it the identity."""
  tiny_config.model.freeze_bn = True
  for weights in ("", "none"):
    tiny_config.model.pretrained = weights
    with pytest.raises(ValueError, match=r"freeze_bn=True with config.model.pretrained="
                                         rf"'{weights}'.* --config.model.freeze_bn=False "
                                         r"--config.model.pretrained=none"):
      config_checks.validate_config(tiny_config, device_count=1)
  tiny_config.model.freeze_bn = False
  config_checks.validate_config(tiny_config, device_count=1)  # random init on purpose
  tiny_config.model.pretrained = ""
  config_checks.validate_config(tiny_config, device_count=1)


@pytest.mark.parametrize("name,argument,fix", [
    ("camvid", None, "--config.model.pretrained=torchvision_resnet50"),
    ("pascal", "deeplab_v2", "--layout=deeplab_v2 --input=resnet101COCO-41f33a49.pth"),
])
def test_paper_configs_name_their_weights_or_how_to_make_them(name, argument, fix):
  config = load_config(name, argument)
  if argument is None:
    assert config.model.pretrained == "torchvision_resnet50" and config.model.freeze_bn
    config.model.pretrained = ""
  config.num_devices = 1
  with pytest.raises(ValueError, match=re.escape(fix)):
    config_checks.validate_config(config, device_count=1)


def test_named_weights_must_fit_the_encoder(tiny_config):
  tiny_config.model.width = 64
  tiny_config.model.depth = 101
  tiny_config.model.pretrained = "torchvision_resnet50"
  with pytest.raises(ValueError, match="holds a ResNet-50 of width 64; the model's encoder "
                                       "is resnet \\(depth 101, width 64\\)"):
    config_checks.validate_config(tiny_config, device_count=1)
  tiny_config.model.pretrained = "efficientnet_lite0"
  with pytest.raises(ValueError, match="holds an EfficientNet-Lite0"):
    config_checks.validate_config(tiny_config, device_count=1)


def test_auto_batches_and_downscale_fit_the_machine(monkeypatch):
  """configs/folder.py on a CPU: 2 + 2 images shrunk to at most 160 pixels a side (512
  -> 128); on accelerators 4 + 4, whole images; a number given on the command line to an
  auto field arrives as a string and counts as that number."""
  from cowmix_jax import data as data_lib

  config = load_config("folder")
  assert config.batch_size == config.unlabelled_batch_size == config.data.downscale == "auto"
  config_checks.resolve_batches(config, "cpu")
  assert (config.batch_size, config.unlabelled_batch_size) == (2, 2)
  monkeypatch.setattr(data_lib, "largest_image", lambda builder, split: ((512, 480), "x"))
  assert data_lib.resolve_downscale(config.data, None, "cpu") == 4
  assert config.data.downscale == 4
  config = load_config("folder")
  config_checks.resolve_batches(config, "gpu")
  assert (config.batch_size, config.unlabelled_batch_size) == (4, 4)
  assert data_lib.resolve_downscale(config.data, None, "gpu") == 1
  config = load_config("folder")
  config_base.replace_field(config, "batch_size", "6")
  config_base.replace_field(config.data, "downscale", "2")
  config_checks.numbers_given_to_auto_fields(config)
  config_checks.resolve_batches(config, "cpu")
  assert (config.batch_size, config.unlabelled_batch_size, config.data.downscale) == (6, 2, 2)


def test_bad_strong_view_settings_are_named_before_any_work(tiny_config):
  tiny_config.method = "unimatch"
  tiny_config.teacher = "mean"
  tiny_config.pseudo_label_threshold = 1.5
  tiny_config.mask.mix = "circle"
  tiny_config.mask.mix_probability = -0.1
  tiny_config.mask.box_area_range = (0.4, 0.02)
  tiny_config.mask.box_aspect_range = (0.0, 3.0)
  tiny_config.strong_blur_sigma_range = (2.0, 0.1)
  with pytest.raises(ValueError) as error:
    config_checks.validate_config(tiny_config, device_count=1)
  text = str(error.value)
  for start in ("config.mask.mix='circle': choose box", "config.teacher='mean': choose one",
                "config.strong_blur_sigma_range=(2.0, 0.1): expected (low, high)",
                "config.pseudo_label_threshold=1.5 must be in [0, 1]",
                "config.mask.mix_probability=-0.1 must be in [0, 1]",
                "config.mask.box_area_range=(0.4, 0.02)",
                "config.mask.box_aspect_range=(0.0, 3.0)"):
    assert f"  - {start}" in text, (start, text)
  assert text.splitlines()[0] == "7 settings cannot work:"
  tiny_config.method, tiny_config.mask.complementary = "fixmatch", True  # one more, each once
  with pytest.raises(ValueError) as error:
    config_checks.validate_config(tiny_config, device_count=1)
  lines = str(error.value).splitlines()
  assert lines[0] == "8 settings cannot work:"
  assert len(set(lines)) == len(lines)
  assert any("complementary=True needs two strong views" in line for line in lines)
  assert sum("config.mask.mix='circle'" in line for line in lines) == 1


def test_strong_view_only_settings_on_other_methods_are_refused(tiny_config):
  tiny_config.teacher = "student"  # cowmix learns from its mean teacher
  with pytest.raises(ValueError, match="config.teacher=student: config.method=cowmix"):
    config_checks.validate_config(tiny_config, device_count=1)
  tiny_config.method = "supervised"
  with pytest.raises(ValueError, match="config.method=supervised learns from labels only"):
    config_checks.validate_config(tiny_config, device_count=1)
  tiny_config.teacher, tiny_config.method = "auto", "fixmatch"
  tiny_config.mask.complementary = True
  with pytest.raises(ValueError, match="complementary=True needs two strong views"):
    config_checks.validate_config(tiny_config, device_count=1)


def test_unimatch_on_a_model_without_a_feature_perturbation_pass_is_refused(tiny_config):
  """A registered model whose __call__ takes no feature_dropout_key cannot run UniMatch's
  feature stream: named at start-up, not as a TypeError inside the first step."""
  import flax.linen as nn

  from cowmix_jax import models

  class PlainHead(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(self.num_classes)(x)

  models.register("plain_head")(lambda config, num_classes: PlainHead(num_classes))
  try:
    tiny_config.model.name, tiny_config.method = "plain_head", "unimatch"
    with pytest.raises(ValueError, match="config.method=unimatch decodes perturbed features, "
                       "which config.model.name=plain_head cannot"):
      config_checks.validate_config(tiny_config, device_count=1)
    tiny_config.method = "fixmatch"  # no feature stream: fine
    config_checks.validate_config(tiny_config, device_count=1)
  finally:
    models.MODELS.unregister("plain_head")


def test_a_folder_without_validation_images_is_told_how_to_fix_it(tmp_path):
  """Before: the error listed the splits and stopped there."""
  import numpy as np

  from cowmix_jax.data import builders

  from conftest import write_png

  root = tmp_path / "mine"
  (root / "classes.json").parent.mkdir()
  (root / "classes.json").write_text('["a", "b"]')
  rng = np.random.default_rng(0)
  for image_id in ("x", "y"):
    write_png(str(root / "train" / "images" / f"{image_id}.png"),
              rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    write_png(str(root / "train" / "labels" / f"{image_id}.png"),
              rng.integers(0, 2, (8, 8), dtype=np.uint8))
  config = load_config("folder")
  config.data.manual_dir, config.data.data_dir = str(root), str(tmp_path / "tfds")
  builder = builders.prepare(config.data)
  with pytest.raises(config_checks.ConfigError, match=r"config.data.eval_split='validation'"
                     r": the dataset 'folder' has the splits \['train'\]; a folder dataset "
                     r"needs labelled images in validation/ .*add validation/images/"):
    config_checks.check_against_data(config, builder)


def test_a_teacher_that_would_never_move_is_refused_unless_it_warms_up(tiny_config):
  """A fixed EMA decay of 1 leaves the evaluated teacher at its start; UniMatch V2's
  warm-up min(1 - 1/(t + 1), 1) still moves it."""
  tiny_config.teacher_alpha = 1.0
  with pytest.raises(ValueError, match=r"^config.teacher_alpha=1 keeps the teacher"):
    config_checks.validate_config(tiny_config, device_count=1)  # cowmix
  tiny_config.method = "fixmatch"  # teacher auto: pseudo-labels from the student
  with pytest.raises(ValueError, match=r"^config.teacher_alpha=1 keeps the teacher"):
    config_checks.validate_config(tiny_config, device_count=1)
  tiny_config.teacher = "ema"
  config_checks.validate_config(tiny_config, device_count=1)
  tiny_config.teacher_alpha = 0.999999
  tiny_config.teacher = "auto"
  config_checks.validate_config(tiny_config, device_count=1)


def test_a_blur_wider_than_the_crop_is_refused_for_the_strong_view_methods(tiny_config):
  """The 32x32 crop takes a kernel of 31 pixels (sigma 5: 15 each side), not of 37
  (sigma 6); methods without strong views never blur."""
  tiny_config.strong_blur_sigma_range = (0.1, 6.0)
  config_checks.check_blur_sigma(tiny_config)  # cowmix
  tiny_config.method = "unimatch"
  with pytest.raises(ValueError, match=r"^config.strong_blur_sigma_range=\(0.1, 6.0\): the "
                     r"blur kernel for sigma 6 \(37 pixels.*crop_size=\(32, 32\)"):
    config_checks.check_blur_sigma(tiny_config)
  tiny_config.strong_blur_sigma_range = (0.1, 5.0)
  config_checks.check_blur_sigma(tiny_config)
