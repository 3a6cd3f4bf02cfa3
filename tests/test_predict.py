"""Tests of cowmix_jax/predict.py: label PNGs and overlays for a folder of any images."""

import os

import numpy as np
import pytest
from PIL import Image

from cowmix_jax import evaluate, predict
from cowmix_jax.data import synthetic

from conftest import write_png


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
  ids = predict.predict_folder(config, workdir, str(images), str(tmp_path / "out"))
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
