"""Tests of cowmix_jax/predict.py: label PNGs and overlays for a folder of any images."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import app
from PIL import Image

from cowmix_jax import evaluate, predict
from cowmix_jax.data import builders, synthetic
from cowmix_jax.data.base import BadExampleError

from conftest import REPO, write_png


def test_predict_matches_evaluate_and_handles_any_size(trained, tmp_path):
  config, workdir, _ = trained
  images = tmp_path / "images"
  for index in range(3):  # validation images, as plain files
    image, _ = synthetic.render_example(0, "validation", index, 32)
    write_png(str(images / f"validation_{index:05d}.png"), image)
  rows, cols = np.mgrid[0:45, 0:37]
  smooth = np.stack([rows * 5, cols * 6, 255 - rows * 5], -1).astype(np.uint8)
  Image.fromarray(smooth).save(images / "odd.jpg", quality=95)
  odd = np.asarray(Image.open(images / "odd.jpg").convert("RGB"))  # what predict reads
  ids, skipped = predict.predict_folder(config, workdir, str(images), str(tmp_path / "out"))
  assert not skipped
  assert sorted(ids) == ["odd", "validation_00000", "validation_00001", "validation_00002"]
  # The same predictions as evaluate.py's, which reads the images through the dataset.
  evaluate.evaluate_checkpoint(config, workdir, prediction_dir=str(tmp_path / "eval"))
  for index in range(3):
    name = f"validation_{index:05d}.png"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / name)),
                                  np.asarray(Image.open(tmp_path / "eval" / name)))
  label = np.asarray(Image.open(tmp_path / "out" / "odd.png"))
  assert label.shape == (45, 37) and label.max() < 6
  overlay = np.asarray(Image.open(tmp_path / "out" / "odd_overlay.png"))
  assert overlay.shape == (45, 37, 3)
  # The overlay is half image, half class colour.
  colours = np.asarray(synthetic.CLASS_COLOURS)[label]
  expected = 0.5 * odd + 0.5 * colours
  np.testing.assert_allclose(overlay, np.round(expected), atol=1)


def test_missing_input_folder_is_named(trained, tmp_path):
  config, workdir, _ = trained
  with pytest.raises(FileNotFoundError, match="--input=.*nothing.*not a directory"):
    predict.predict_folder(config, workdir, str(tmp_path / "nothing"), str(tmp_path / "o"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="holds no images"):
    predict.predict_folder(config, workdir, str(tmp_path / "empty"), str(tmp_path / "o"))


def _images(folder, count=2):
  for index in range(count):
    image, _ = synthetic.render_example(0, "validation", index, 32)
    write_png(str(folder / f"validation_{index:05d}.png"), image)
  return sorted(os.listdir(folder))


def test_the_input_folder_is_never_an_output_folder(trained, tmp_path):
  """Before: --output equal to --input replaced every image with a label PNG, exit 0."""
  config, workdir, _ = trained
  images = tmp_path / "images"
  before = {name: (images / name).read_bytes() for name in _images(images)}
  for output in (images, images / "predictions"):
    with pytest.raises(app.UsageError, match=r"is the input folder \(--input\) or inside it"):
      predict.predict_folder(config, workdir, str(images), str(output))
  assert {name: (images / name).read_bytes() for name in os.listdir(images)} == before


def test_existing_predictions_are_replaced_only_with_overwrite(trained, tmp_path):
  config, workdir, _ = trained
  images, out = tmp_path / "images", tmp_path / "out"
  _images(images)
  out.mkdir()
  (out / "validation_00001_overlay.png").write_bytes(b"the user's file")
  with pytest.raises(app.UsageError, match=r"already holds 1 of the files this would "
                                           r"write \(e.g. validation_00001_overlay.png\); "
                                           r"pass --overwrite"):
    predict.predict_folder(config, workdir, str(images), str(out))
  assert (out / "validation_00001_overlay.png").read_bytes() == b"the user's file"
  assert sorted(os.listdir(out)) == ["validation_00001_overlay.png"]  # nothing written
  ids, _ = predict.predict_folder(config, workdir, str(images), str(out), overwrite=True)
  assert len(ids) == 2 and Image.open(out / "validation_00001_overlay.png").size == (32, 32)


def test_images_whose_outputs_share_a_name_are_refused_before_any_write(trained, tmp_path):
  """Before: images c.png and c_overlay.png gave 'Wrote 3 predictions', exit 0, and c's
  overlay was replaced by the label PNG predicted for the image c_overlay."""
  config, workdir, _ = trained
  images = tmp_path / "images"
  names = _images(images)
  (images / "validation_00000_overlay.png").write_bytes((images / names[1]).read_bytes())
  with pytest.raises(app.UsageError, match=r"the images validation_00000 and "
                                           r"validation_00000_overlay would both be "
                                           r"written as validation_00000_overlay.png"):
    predict.predict_folder(config, workdir, str(images), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_an_unreadable_image_is_skipped_in_one_line_or_stops_a_strict_run(
    trained, tmp_path, capsys):
  """Before: one unreadable file stopped the whole batch."""
  config, workdir, _ = trained
  images = tmp_path / "images"
  _images(images)
  (images / "broken.png").write_bytes(b"not a png")
  ids, skipped = predict.predict_folder(config, workdir, str(images), str(tmp_path / "out"))
  assert ids == ["validation_00000", "validation_00001"]
  assert len(skipped) == 1 and skipped[0].endswith(
      "broken.png: cannot read the image: not an image format PIL knows (a corrupt or "
      "mislabelled file?)")
  lines = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("skipped")]
  assert lines == [f"skipped {skipped[0]}"]
  with pytest.raises(BadExampleError, match="broken.png"):
    predict.predict_folder(config, workdir, str(images), str(tmp_path / "strict"),
                           strict=True)


def test_predict_needs_the_run_only_not_its_dataset(trained, tmp_path, monkeypatch):
  """Before: predict prepared the training dataset for its class names and palette."""
  config, workdir, _ = trained
  images = tmp_path / "images"
  _images(images)
  classes = json.loads((pathlib.Path(workdir) / "classes.json").read_text())
  assert classes == {"names": list(synthetic.CLASS_NAMES),
                     "colours": [list(c) for c in synthetic.CLASS_COLOURS]}

  def no_dataset(*args, **kwargs):
    raise AssertionError("predict read the dataset")

  monkeypatch.setattr(builders, "prepare", no_dataset)
  ids, _ = predict.predict_folder(config, workdir, str(images), str(tmp_path / "out"))
  assert len(ids) == 2
  label = Image.open(tmp_path / "out" / "validation_00000.png")
  palette = np.asarray(label.getpalette()[:3 * len(synthetic.CLASS_COLOURS)]).reshape(-1, 3)
  np.testing.assert_array_equal(palette, synthetic.CLASS_COLOURS)


def test_the_command_line_refuses_in_one_line_with_status_2(trained, tmp_path):
  _, workdir, _ = trained
  images = tmp_path / "images"
  _images(images)
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "cowmix_jax.predict", f"--workdir={workdir}",
                        f"--input={images}", f"--output_dir={images}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"predict.py: --output_dir={images} is the input folder (--input) or inside it "
      f"({images}): what it writes would replace or mix with what is read from there; "
      f"choose a path outside it (--help lists the flags)")
