"""Tests of cowmix_jax/data/folder.py: users' own directories, unlabelled images included."""

import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import write_png

from cowmix_jax.data import base, builders, folder

SIZE = (9, 11)


def _tree(root, classes_file="classes.json", unlabelled=("img_c",), seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(root)
  if classes_file == "classes.json":
    with open(os.path.join(root, classes_file), "w") as f:
      json.dump([{"name": "grass", "colour": [0, 200, 0]}, {"name": "rock", "colour": [90, 90, 90]},
                 {"name": "water", "colour": [0, 0, 255]}], f)
  else:
    with open(os.path.join(root, classes_file), "w") as f:
      f.write("grass\nrock\n\nwater\n")
  written = {}
  for split, ids in (("train", ("img_a", "img_b", "img_c")), ("validation", ("v1",))):
    for image_id in ids:
      image = rng.integers(0, 256, SIZE + (3,), dtype=np.uint8)
      write_png(os.path.join(root, split, "images", image_id + ".png"), image)
      label = None
      if image_id not in unlabelled:
        label = rng.choice(np.array([0, 1, 2, 255], np.uint8), SIZE)
        write_png(os.path.join(root, split, "labels", image_id + ".png"), label)
      written[image_id] = (image, label)
  return written


def _data(root, data_dir):
  return ml_collections.ConfigDict(dict(name="folder", manual_dir=str(root),
                                        data_dir=str(data_dir)))


def test_folder_dataset_takes_unlabelled_images_without_masks(tmp_path):
  written = _tree(str(tmp_path / "mine"))
  builder = builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))
  assert builder.info.metadata["class_names"] == ["grass", "rock", "water"]
  assert builder.info.metadata["class_colours"][2] == [0, 0, 255]
  splits = {s: list(tfds.as_numpy(builder.as_dataset(split=s)))
            for s in ("train", "unlabelled", "validation")}
  assert sorted(e["image_id"].decode() for e in splits["train"]) == ["img_a", "img_b"]
  assert [e["image_id"].decode() for e in splits["unlabelled"]] == ["img_c"]
  assert splits["unlabelled"][0]["label"].shape == (0, 0)
  np.testing.assert_array_equal(splits["unlabelled"][0]["image"], written["img_c"][0])
  for example in splits["train"] + splits["validation"]:
    image, label = written[example["image_id"].decode()]
    np.testing.assert_array_equal(example["image"], image)
    np.testing.assert_array_equal(example["label"], label)


def test_text_class_list_and_two_folders_never_share_prepared_files(tmp_path):
  _tree(str(tmp_path / "one"), classes_file="classes.txt", unlabelled=())
  _tree(str(tmp_path / "two"), unlabelled=(), seed=1)
  first = builders.prepare(_data(tmp_path / "one", tmp_path / "tfds"))
  second = builders.prepare(_data(tmp_path / "two", tmp_path / "tfds"))
  assert first.info.metadata["class_names"] == ["grass", "rock", "water"]
  assert first.info.metadata["class_colours"] is None
  assert first.data_dir != second.data_dir
  assert "unlabelled" not in first.info.splits
  image_one = next(iter(tfds.as_numpy(first.as_dataset(split="validation"))))["image"]
  image_two = next(iter(tfds.as_numpy(second.as_dataset(split="validation"))))["image"]
  assert not np.array_equal(image_one, image_two)


def test_validation_images_need_labels(tmp_path):
  _tree(str(tmp_path / "mine"), unlabelled=("v1",))
  with pytest.raises(base.BadExampleError, match="1 validation image.*v1.png"):
    builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))


def test_label_without_image_is_named(tmp_path):
  _tree(str(tmp_path / "mine"))
  write_png(str(tmp_path / "mine" / "train" / "labels" / "ghost.png"), np.zeros(SIZE))
  with pytest.raises(base.BadExampleError, match="ghost.png: no image with the id 'ghost'"):
    builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))


def test_missing_or_bad_class_list(tmp_path):
  _tree(str(tmp_path / "mine"))
  os.remove(tmp_path / "mine" / "classes.json")
  with pytest.raises(base.DatasetLayoutError, match="(?s)no classes.json or classes.txt.*train/images"):
    builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))
  (tmp_path / "mine" / "classes.json").write_text('[{"name": "a", "colour": [1, 2]}]')
  with pytest.raises(base.DatasetLayoutError, match="class 'a': colour \\[1, 2\\]"):
    folder.read_classes(str(tmp_path / "mine"))


def test_label_values_beyond_the_class_list_are_named(tmp_path):
  _tree(str(tmp_path / "mine"))
  write_png(str(tmp_path / "mine" / "train" / "labels" / "img_a.png"), np.full(SIZE, 3))
  with pytest.raises(base.BadExampleError, match=r"img_a.png: label values \[3\] are outside "
                                                 r"the 3 classes"):
    builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))
