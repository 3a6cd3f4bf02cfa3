"""Tests of cowmix_jax/data/__init__.py (the inputs of a run) and data/synthetic.py."""

import json

import numpy as np
import pytest

from cowmix_jax import data as data_lib
from cowmix_jax.data import splits, synthetic


def test_synthetic_is_deterministic_by_seed_and_index():
  a_image, a_label = synthetic.render_example(0, "train", 5, 64)
  b_image, b_label = synthetic.render_example(0, "train", 5, 64)
  np.testing.assert_array_equal(a_image, b_image)
  np.testing.assert_array_equal(a_label, b_label)
  c_image, _ = synthetic.render_example(1, "train", 5, 64)
  d_image, _ = synthetic.render_example(0, "validation", 5, 64)
  assert np.mean(a_image != c_image) > 0.5 and np.mean(a_image != d_image) > 0.5
  assert a_image.dtype == np.uint8 and a_image.shape == (64, 64, 3)
  assert a_label.dtype == np.uint8 and a_label.shape == (64, 64)


def test_synthetic_uses_every_class_and_colour_does_not_give_the_class():
  images, labels = synthetic.load_split(0, "train", 64, 64)
  counts = np.bincount(labels.ravel(), minlength=synthetic.NUM_CLASSES)
  assert np.all(counts > 0.01 * labels.size), counts
  # Objects are randomly coloured: the mean colour of each class is close to grey,
  # and varies a lot within the class.
  for class_id in range(1, synthetic.NUM_CLASSES):
    pixels = images[labels == class_id].astype(np.float64) / 255
    assert pixels.std(axis=0).min() > 0.2, synthetic.CLASS_NAMES[class_id]


def _inputs(config, tmp_path, **data):
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.update(data)
  (tmp_path / "work").mkdir(exist_ok=True)
  return data_lib.make_inputs(config, str(tmp_path / "work"))


def test_inputs_train_on_the_chosen_subset_and_record_it(tiny_config, tmp_path):
  inputs = _inputs(tiny_config, tmp_path)
  assert inputs.class_names == list(synthetic.CLASS_NAMES)
  recorded = json.loads((tmp_path / "work" / "labelled_ids.json").read_text())
  assert recorded["ids"] == inputs.labelled_ids and recorded["num_available"] == 32
  assert inputs.labelled_ids == splits.choose_labelled(
      [f"train_{i:05d}" for i in range(32)], 8, tiny_config.seed)
  rendered = {f"train_{i:05d}": synthetic.render_example(0, "train", i, 32)[1]
              for i in range(32)}
  batch = next(inputs.train)
  assert batch["image"].shape == (8, 32, 32, 3) and batch["unlabelled_image"].shape == (16, 32, 32, 3)
  for label in batch["label"]:  # every labelled image is one of the chosen (maybe flipped)
    assert any(np.array_equal(label, rendered[i]) or np.array_equal(label, rendered[i][:, ::-1])
               for i in inputs.labelled_ids)


def test_a_labelled_id_file_overrides_the_draw(tiny_config, tmp_path):
  (tmp_path / "ids.txt").write_text("train_00004\ntrain_00009\n")
  inputs = _inputs(tiny_config, tmp_path, labelled_ids_file=str(tmp_path / "ids.txt"))
  assert inputs.labelled_ids == ["train_00004", "train_00009"]
  (tmp_path / "bad.txt").write_text("train_00004\ntrain_99999\n")
  with pytest.raises(ValueError, match="bad.txt: 1 id\\(s\\) are not in the training split"):
    _inputs(tiny_config, tmp_path, labelled_ids_file=str(tmp_path / "bad.txt"))


def test_asking_for_more_labelled_images_than_exist_says_so(tiny_config, tmp_path):
  with pytest.raises(ValueError, match="num_labelled=33.*32 training images"):
    _inputs(tiny_config, tmp_path, num_labelled=33)


def test_unknown_dataset_name_is_an_error(tiny_config, tmp_path):
  with pytest.raises(ValueError, match="config.data.name='imagenet'.*camvid"):
    _inputs(tiny_config, tmp_path, name="imagenet")
