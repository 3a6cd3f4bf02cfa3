"""Tests of cowmix_jax/evaluate.py: it reproduces training's mIoU, saved predictions,
flip and sliding-window averaging, the command line."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import app
from PIL import Image

from cowmix_jax import evaluate, evaluator, models, reporting, train
from cowmix_jax.data import builders
from cowmix_jax.models import convert

from conftest import REPO


def test_evaluate_reproduces_the_training_miou_and_saved_predictions(trained, tmp_path):
  config, workdir, trained_results = trained
  results = evaluate.evaluate_checkpoint(config, workdir, "latest",
                                         prediction_dir=str(tmp_path / "pred"))
  assert results["step"] == 4 and results["model"] == "teacher"
  assert results["miou"] == pytest.approx(trained_results["miou"], abs=1e-12)
  assert results["per_class_iou"] == trained_results["per_class_iou"]
  # numpy recomputation from the saved PNGs and the dataset's labels.
  builder = builders.prepare(config.data)
  num_classes = 6
  confusion = np.zeros((num_classes, num_classes), np.int64)
  for example in tfds.as_numpy(builder.as_dataset(split="validation")):
    prediction = np.asarray(Image.open(tmp_path / "pred" / (example["image_id"].decode() + ".png")))
    assert prediction.shape == example["label"].shape
    valid = example["label"] != 255
    confusion += np.bincount(num_classes * example["label"][valid].astype(int)
                             + prediction[valid], minlength=num_classes ** 2
                             ).reshape(num_classes, num_classes)
  intersection = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - intersection
  with np.errstate(invalid="ignore"):
    iou = intersection / union
  for name, value in zip(results["per_class_iou"], iou):
    if np.isnan(value):
      assert np.isnan(results["per_class_iou"][name])
    else:
      assert results["per_class_iou"][name] == pytest.approx(value, abs=1e-12)


def test_window_starts_by_hand():
  assert evaluator.window_starts(10, 4, 3) == [0, 3, 6]
  assert evaluator.window_starts(10, 4, 4) == [0, 4, 6]
  assert evaluator.window_starts(10, 12, 4) == [0]


def _model_and_variables(config):
  model = models.build_model(config.model, 6)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 64, 64, 3), np.float32))
  images = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (2, 64, 96, 3)))
  return model, variables, images


def test_flip_averaging_makes_predictions_mirror_equivariant(tiny_config):
  model, variables, images = _model_and_variables(tiny_config)
  mirrored = images[:, :, ::-1]
  flip = evaluator.make_logits_fn(model, flip=True)
  np.testing.assert_allclose(flip(variables, mirrored), flip(variables, images)[:, :, ::-1],
                             rtol=1e-5, atol=1e-5)
  plain = evaluator.make_logits_fn(model)
  assert not np.allclose(plain(variables, mirrored), plain(variables, images)[:, :, ::-1],
                         atol=1e-3), "without averaging the network is not equivariant"


def test_sliding_window_equals_a_loop_over_crops(tiny_config):
  model, variables, images = _model_and_variables(tiny_config)
  windowed = evaluator.make_logits_fn(model, window=(64, 64), stride=(32, 32))(variables, images)
  total = np.zeros(images.shape[:3] + (6,))
  count = np.zeros(images.shape[:3] + (1,))
  for left in (0, 32):  # width 96, windows 64 wide at 0 and 32
    crop = images[:, :, left:left + 64]
    total[:, :, left:left + 64] += np.asarray(model.apply(variables, crop))
    count[:, :, left:left + 64] += 1
  np.testing.assert_allclose(windowed, total / count, rtol=1e-5, atol=1e-5)
  whole = evaluator.make_logits_fn(model, window=(64, 96), stride=(64, 96))(variables, images)
  np.testing.assert_allclose(whole, model.apply(variables, images), rtol=1e-5, atol=1e-5)


def test_command_line_writes_json_and_markdown(trained, tmp_path):
  config, workdir, trained_results = trained
  # The run's saved config.json stands for the dozen overrides it was trained with.
  command = [sys.executable, "-m", "cowmix_jax.evaluate", f"--config={workdir}/config.json",
             f"--workdir={workdir}", "--checkpoint=best", f"--output={tmp_path / 'r.json'}",
             f"--markdown={tmp_path / 'r.md'}"]
  out = subprocess.run(command, cwd=REPO, env=dict(os.environ, XLA_FLAGS=""),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((tmp_path / "r.json").read_text())
  assert results["checkpoint"] == "best" and results["split"] == "validation"
  assert results["miou"] == pytest.approx(trained_results["miou"], abs=1e-12)
  assert f"{100 * trained_results['miou']:6.2f}" in out.stdout
  assert "**mIoU**" in (tmp_path / "r.md").read_text()
  missing = subprocess.run(command[:3] + ["--config=configs/synthetic.py",
                                         f"--workdir={tmp_path / 'empty'}"] + command[5:6],
                           cwd=REPO, env=dict(os.environ, XLA_FLAGS=""), capture_output=True,
                           text=True, timeout=600)
  assert missing.returncode != 0 and "no best checkpoint in" in missing.stderr


def _tool(module, *args):
  return subprocess.run([sys.executable, "-m", f"cowmix_jax.{module}", *args], cwd=REPO,
                        env=dict(os.environ, XLA_FLAGS=""), capture_output=True, text=True,
                        timeout=600)


def test_tools_need_only_the_checkpoint_and_the_saved_config(tmp_path, tiny_config):
  # A run that started from a pretrained encoder file, with settings that differ from
  # configs/synthetic.py in a dozen places; then the file is deleted.
  model = models.build_model(tiny_config.model, 6)
  donor = train.init_variables(model, jax.random.PRNGKey(7), (1, 32, 32, 3))
  encoder_file = tmp_path / "encoder.msgpack"
  convert.save({c: {"encoder": donor[c]["encoder"]} for c in ("params", "batch_stats")},
               str(encoder_file))
  tiny_config.model.pretrained = str(encoder_file)
  tiny_config.data.data_dir = str(tmp_path / "tfds")
  workdir = str(tmp_path / "work")
  trained = train.train_and_evaluate(tiny_config, workdir)
  encoder_file.unlink()
  # evaluate.py without --config: the run's own config; an override on top still applies.
  out = _tool("evaluate", f"--workdir={workdir}", f"--output={tmp_path / 'r.json'}",
              "--config.eval_batch_size=4", f"--predictions_dir={tmp_path / 'eval_png'}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((tmp_path / "r.json").read_text())["miou"] == trained["miou"]
  # predict.py likewise, on a validation image written out as a file: the same labels as
  # evaluate.py's predictions of it.
  builder = builders.prepare(tiny_config.data)
  example = next(iter(tfds.as_numpy(builder.as_dataset(split="validation"))))
  name = example["image_id"].decode()
  (tmp_path / "images").mkdir()
  Image.fromarray(example["image"]).save(tmp_path / "images" / f"{name}.png")
  out = _tool("predict", f"--workdir={workdir}", f"--input={tmp_path / 'images'}",
              f"--output_dir={tmp_path / 'predict_png'}")
  assert out.returncode == 0, out.stderr[-3000:]
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "predict_png" / f"{name}.png")),
                                np.asarray(Image.open(tmp_path / "eval_png" / f"{name}.png")))


def test_config_argv_puts_the_saved_config_in_place_of_a_missing_or_json_config():
  saved = evaluate.SAVED_CONFIG_FILE
  assert evaluate.config_argv(["prog", "--workdir=W", "--config.seed=1"]) == [
      "prog", f"--config={saved}:W", "--workdir=W", "--config.seed=1"]
  assert evaluate.config_argv(["prog", "--config=gs://b/run/config.json", "--workdir=W"]) == [
      "prog", f"--config={saved}:gs://b/run/config.json", "--workdir=W"]
  unchanged = ["prog", "--config=configs/synthetic.py", "--workdir=W"]
  assert evaluate.config_argv(unchanged) == unchanged
  assert evaluate.config_argv(["prog", "--split=test"]) == ["prog", "--split=test"]


def test_a_dataset_with_the_classes_in_another_order_is_refused(trained, tmp_path):
  """Before: a folder listing the run's two classes the other way round was scored
  class k against the other class's pixels (polyp 12.45 for a true 19.84), exit 0."""
  config, workdir, _ = trained
  names = list(reporting.read_classes(workdir)[0])
  evaluate.check_same_classes(workdir, names, config.data)
  for other in (names[::-1], names[:-1], names[:-1] + ["other"]):
    with pytest.raises(ValueError, match=r"has the classes .* but the run in .* was trained "
                                         r"on .*classes.json\); evaluate it on data"):
      evaluate.check_same_classes(workdir, other, config.data)


def test_outputs_are_checked_before_any_work(trained, tmp_path):
  """Before: --output=WORKDIR/config.json replaced the run's config, and --output or
  --predictions_dir inside the dataset folder replaced its files, exit 0."""
  config, workdir, _ = trained
  data = tmp_path / "mine"
  (data / "validation" / "labels").mkdir(parents=True)
  (data / "classes.json").write_text("[]")
  folder_config = config.copy_and_resolve_references()
  folder_config.data.manual_dir = str(data)
  check = evaluate.check_outputs
  with pytest.raises(app.UsageError, match="one of the files the run in"):
    check(config, workdir, os.path.join(workdir, "config.json"), "", "", True)
  with pytest.raises(app.UsageError, match="--markdown=.* is the dataset folder .*or inside"):
    check(folder_config, workdir, "", str(data / "classes.json"), "", True)
  with pytest.raises(app.UsageError, match="--predictions_dir=.* is the dataset folder"):
    check(folder_config, workdir, "", "", str(data / "validation" / "labels"), True)
  with pytest.raises(app.UsageError, match="the same file"):
    check(config, workdir, str(tmp_path / "r"), str(tmp_path / "r"), "", False)
  (tmp_path / "r.json").write_text("mine")
  with pytest.raises(app.UsageError, match="exists; pass --overwrite"):
    check(config, workdir, str(tmp_path / "r.json"), "", "", False)
  check(config, workdir, str(tmp_path / "r.json"), "", str(tmp_path / "new"), True)
  assert (tmp_path / "r.json").read_text() == "mine"  # checking writes nothing


def test_command_line_refuses_a_bad_window_and_an_existing_output_in_one_line(trained,
                                                                             tmp_path):
  _, workdir, _ = trained
  (tmp_path / "r.json").write_text("mine")
  for args, message in ((["--window=abc"], "--window=abc: expected two positive whole"),
                        ([f"--output={tmp_path / 'r.json'}"], "exists; pass --overwrite")):
    out = _tool("evaluate", f"--workdir={workdir}", *args)
    assert out.returncode != 0 and message in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
  assert (tmp_path / "r.json").read_text() == "mine"


def test_a_config_with_another_model_is_one_error_naming_the_fix(trained):
  """Before: a page of flax's ScopeParamShapeError traceback."""
  config, workdir, _ = trained
  other = config.copy_and_resolve_references()
  other.model.width = 8  # the run's is 4
  with pytest.raises(ValueError, match=r"does not fit the model this config builds .*leave "
                                       r"out --config to use the run's own config"):
    evaluate.evaluate_checkpoint(other, workdir)
