"""Tests of cowmix_jax/data/folder.py: users' own directories, unlabelled images included."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cowmix_jax import config_base
from cowmix_jax.data import base, builders, folder

from conftest import write_png

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
  return config_base.get_data_config("folder", manual_dir=str(root),
                                      data_dir=str(data_dir))


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
  with pytest.raises(base.DatasetLayoutError,
                     match="(?s)no classes.json or classes.txt.*train/images"):
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


def _binary_tree(root, values=None, label_format="PNG", rgb=False, seed=0, block=(16, 24)):
  """A grey-image binary dataset whose masks store background 0 and foreground 255 (a
  ``block`` of foreground in each 32x48 mask); returns ``{id: class-id mask}`` of the
  train images."""
  rng = np.random.default_rng(seed)
  os.makedirs(root)
  classes = ["background", "foreground"] if values is None else [
      {"name": "background", "value": values[0]}, {"name": "foreground", "value": values[1]}]
  with open(os.path.join(root, "classes.json"), "w") as f:
    json.dump(classes, f)
  masks = {}
  for index in range(3):
    image_id = f"case{index}"
    ids = np.zeros((32, 48), np.uint8)
    top, left = rng.integers(0, 32 - block[0]), rng.integers(0, 48 - block[1])
    ids[top:top + block[0], left:left + block[1]] = 1  # 1/4 of the pixels by default
    write_png(os.path.join(root, "train", "images", image_id + ".png"),
              rng.integers(0, 256, (32, 48), dtype=np.uint8))
    stored = ids * 255
    suffix = ".png" if label_format == "PNG" else ".jpg"
    path = os.path.join(root, "train", "labels", image_id + suffix)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    picture = Image.fromarray(np.stack([stored] * 3, -1) if rgb else stored)
    picture.save(path, format=label_format, **({"quality": 75} if suffix == ".jpg" else {}))
    masks[image_id] = ids
  return masks


def _train_labels(builder):
  return {e["image_id"].decode(): e["label"]
          for e in tfds.as_numpy(builder.as_dataset(split="train"))}


def test_class_values_map_binary_masks_to_both_classes(tmp_path):
  masks = _binary_tree(str(tmp_path / "mine"), values=(0, 255))
  builder = builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))
  labels = _train_labels(builder)
  assert labels.keys() == masks.keys()
  for image_id, ids in masks.items():
    np.testing.assert_array_equal(labels[image_id], ids)


def test_binary_masks_without_values_stop_with_the_classes_json_fix(tmp_path):
  _binary_tree(str(tmp_path / "mine"))
  fix = ('[{"name": "background", "value": 0}, {"name": "foreground", "value": 255}]')
  with pytest.raises(base.BadExampleError) as raised:
    builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))
  message = str(raised.value)
  assert "['foreground']" in message and "covers 25.0% of the labelled pixels" in message
  assert fix in message and str(tmp_path / "mine" / "classes.json") in message
  # The fix, pasted into classes.json, builds (the changed class list is a new dataset).
  (tmp_path / "mine" / "classes.json").write_text(fix)
  assert set(np.unique(np.concatenate([m.ravel() for m in _train_labels(
      builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))).values()]))) == {0, 1}


def test_binary_masks_with_a_small_foreground_stop_as_well(tmp_path):
  """Before: with the foreground (255) on less than 20% of the pixels, the build went
  on and trained with every foreground pixel ignored, exit 0."""
  _binary_tree(str(tmp_path / "mine"), block=(6, 8))  # 48 of 1536 pixels: 3.1%
  with pytest.raises(base.BadExampleError) as raised:
    builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))
  assert "['foreground']" in str(raised.value) and "covers 3.1% of" in str(raised.value)
  assert '{"name": "foreground", "value": 255}' in str(raised.value)


@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_jpeg_masks_snap_to_the_listed_values(tmp_path, rgb, caplog):
  caplog.set_level(logging.INFO)
  masks = _binary_tree(str(tmp_path / "mine"), values=(0, 255), label_format="JPEG", rgb=rgb)
  # The files really are noisy: values other than 0 and 255 around the block edges.
  stored = base.decode_label(base.read_file(
      str(tmp_path / "mine" / "train" / "labels" / "case0.jpg")), "case0.jpg")
  assert np.count_nonzero((stored != 0) & (stored != 255)) > 0
  labels = _train_labels(builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds")))
  for image_id, ids in masks.items():
    np.testing.assert_array_equal(labels[image_id], ids)
  noisy = sum(np.count_nonzero((base.decode_label(base.read_file(str(path)), "") % 255) != 0)
              for path in (tmp_path / "mine" / "train" / "labels").iterdir())
  assert f"3 lossy (JPEG) label file(s); {noisy} of {3 * 32 * 48} pixels" in caplog.text


def test_png_values_that_no_class_has_are_named(tmp_path):
  _binary_tree(str(tmp_path / "mine"), values=(0, 255))
  write_png(str(tmp_path / "mine" / "train" / "labels" / "case0.png"),
            np.full((32, 48), 128))
  with pytest.raises(base.BadExampleError,
                     match=r"case0.png: label values \[128\] are not among the classes' "
                           r"values \[0, 255\]"):
    builders.prepare(_data(tmp_path / "mine", tmp_path / "tfds"))


def test_class_values_must_be_distinct_bytes(tmp_path):
  os.makedirs(tmp_path / "mine")
  for entries, message in (('[{"name": "a", "value": 0}, {"name": "b", "value": 300}]',
                            "class 'b': value 300 is not an integer in 0..255"),
                           ('[{"name": "a", "value": 7}, {"name": "b", "value": 7}]',
                            r"share the values \[7\]"),
                           ('[{"name": "a", "value": 0}, "b"]',
                            "give a value for every class or for none"),
                           ('[{"name": "a", "valeu": 0}]', r"unknown keys \['valeu'\]")):
    (tmp_path / "mine" / "classes.json").write_text(entries)
    with pytest.raises(base.DatasetLayoutError, match=message):
      folder.read_classes(str(tmp_path / "mine"))


def test_snap_table_goes_to_the_nearest_value_and_keeps_ignore():
  classes = folder.ClassList(["a", "b", "c"], values=[0, 100, 200])
  snapped = classes.snap_table()
  expected = np.array([np.argmin([abs(v - 0), abs(v - 100), abs(v - 200), abs(v - 255)])
                       for v in range(256)])
  expected[expected == 3] = base.IGNORE_LABEL
  np.testing.assert_array_equal(snapped, expected)


def test_an_edited_folder_is_prepared_anew_never_read_stale(tmp_path, caplog):
  """Before: after two labelled images were added, the splits stayed as they were."""
  root = tmp_path / "mine"
  _tree(str(root))
  data = _data(root, tmp_path / "tfds")
  first = builders.prepare(data)
  assert first.info.splits["train"].num_examples == 2
  rng = np.random.default_rng(5)
  for image_id in ("img_d", "img_e"):
    write_png(str(root / "train" / "images" / f"{image_id}.png"),
              rng.integers(0, 256, SIZE + (3,), dtype=np.uint8))
    write_png(str(root / "train" / "labels" / f"{image_id}.png"),
              rng.choice(np.array([0, 1, 2], np.uint8), SIZE))
  with caplog.at_level("INFO"):
    second = builders.prepare(data)
  assert second.data_dir != first.data_dir
  assert second.info.splits["train"].num_examples == 4
  assert any(f"prepared copy {second.data_dir}: train 4, unlabelled 1, validation 1 images"
             in r.getMessage() for r in caplog.records)
  # A changed label (same name) changes the copy too; an untouched folder reuses it.
  write_png(str(root / "train" / "labels" / "img_d.png"), np.zeros(SIZE + (1,), np.uint8)[..., 0])
  os.utime(root / "train" / "labels" / "img_d.png", ns=(1, 1))
  third = builders.prepare(data)
  assert third.data_dir != second.data_dir
  assert builders.prepare(data).data_dir == third.data_dir
  labels = {e["image_id"].decode(): e["label"]
            for e in tfds.as_numpy(third.as_dataset(split="train"))}
  np.testing.assert_array_equal(labels["img_d"], np.zeros(SIZE, np.uint8))


def test_a_copied_or_moved_folder_is_the_same_dataset_and_an_edit_is_not(tmp_path):
  """Before: the copy's name was made of the folder's path and its files' modification
  times, so a `cp -r` or a move gave a new dataset and its runs would not resume; and a
  label changed in place, at the same size and with its time put back, was read stale."""
  root = tmp_path / "mine"
  _tree(str(root))
  first = builders.prepare(_data(root, tmp_path / "tfds"))
  shutil.copytree(root, tmp_path / "elsewhere" / "renamed")  # new path, new times
  moved = builders.prepare(_data(tmp_path / "elsewhere" / "renamed", tmp_path / "tfds"))
  assert moved.info.full_name == first.info.full_name
  assert moved.info.full_name.startswith("cowmix_folder/content_")
  before = folder.folder_fingerprint(str(root))
  label = root / "train" / "labels" / "img_a.png"
  status = os.stat(label)
  data = bytearray(label.read_bytes())
  data[-20] ^= 1  # one bit of the image data: same size
  label.write_bytes(bytes(data))
  os.utime(label, ns=(status.st_atime_ns, status.st_mtime_ns))
  assert os.stat(label).st_size == status.st_size
  assert folder.folder_fingerprint(str(root)) != before
