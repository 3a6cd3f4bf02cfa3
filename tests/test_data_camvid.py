"""Tests of cowmix_jax/data/camvid.py (and the checks of data/base.py it relies on)."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cowmix_jax import config_base
from cowmix_jax.data import base, builders

from conftest import SHARED_CAMVID, write_png


def _camvid_tree(root, counts=(("train", 3), ("val", 2)), size=(12, 16), seed=0):
  """A SegNet-layout tree; returns ``{split_dir: {id: (image, raw_label)}}``."""
  rng = np.random.default_rng(seed)
  written = {}
  for split, count in counts:
    written[split] = {}
    for i in range(count):
      image_id = f"0001TP_{split}{i:03d}"
      image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
      label = rng.integers(0, 12, size, dtype=np.uint8)  # 11 = void
      write_png(os.path.join(root, split, image_id + ".png"), image)
      write_png(os.path.join(root, split + "annot", image_id + ".png"), label)
      written[split][image_id] = (image, label)
  return written


def _data(root, data_dir):
  return config_base.get_data_config("camvid", manual_dir=str(root),
                                      data_dir=str(data_dir))


def _examples(builder, split):
  return {ex["image_id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def test_camvid_builder_reads_the_segnet_layout(tmp_path):
  written = _camvid_tree(tmp_path / "camvid")
  builder = builders.prepare(_data(tmp_path / "camvid", tmp_path / "tfds"))
  assert set(builder.info.splits) == {"train", "validation"}, "no test split without test/"
  assert builder.info.metadata["class_names"][0] == "sky"
  assert len(builder.info.metadata["class_names"]) == 11
  for split, directory in (("train", "train"), ("validation", "val")):
    examples = _examples(builder, split)
    assert set(examples) == set(written[directory])
    for image_id, (image, raw) in written[directory].items():
      example = examples[image_id]
      np.testing.assert_array_equal(example["image"], image)
      expected = np.where(raw == 11, 255, raw)
      np.testing.assert_array_equal(example["label"], expected)
      assert example["label"].dtype == np.uint8 and example["label"].shape == (12, 16)
      counts = np.bincount(raw.ravel(), minlength=12)
      np.testing.assert_array_equal(example["label_histogram"], counts)  # 11 -> the 255 slot


def test_camvid_builds_the_test_split_when_present(tmp_path):
  _camvid_tree(tmp_path / "camvid", counts=(("train", 2), ("val", 1), ("test", 2)))
  builder = builders.prepare(_data(tmp_path / "camvid", tmp_path / "tfds"))
  assert builder.info.splits["test"].num_examples == 2


def test_missing_dataset_directory_names_it_and_shows_the_layout(tmp_path):
  with pytest.raises(base.DatasetLayoutError, match=r"(?s)nowhere.*does not exist.*trainannot/"):
    builders.prepare(_data(tmp_path / "nowhere", tmp_path / "tfds"))


def test_no_directory_at_all_names_the_config_key_and_variable(tmp_path, monkeypatch):
  monkeypatch.delenv("COWMIX_CAMVID_DIR", raising=False)
  data = _data("", tmp_path / "tfds")
  with pytest.raises(base.DatasetLayoutError, match="manual_dir.*COWMIX_CAMVID_DIR"):
    builders.prepare(data)


def test_environment_variable_is_the_fallback(tmp_path, monkeypatch):
  _camvid_tree(tmp_path / "camvid")
  monkeypatch.setenv("COWMIX_CAMVID_DIR", str(tmp_path / "camvid"))
  builder = builders.prepare(_data("", tmp_path / "tfds"))
  assert builder.info.splits["train"].num_examples == 3


def test_misplaced_directory_names_the_missing_folder(tmp_path):
  _camvid_tree(tmp_path / "camvid")
  os.rename(tmp_path / "camvid" / "valannot", tmp_path / "camvid" / "val_labels")
  with pytest.raises(base.DatasetLayoutError, match=r"(?s)valannot.*missing.*val_labels"):
    builders.prepare(_data(tmp_path / "camvid", tmp_path / "tfds"))


def test_unreadable_image_names_the_file(tmp_path):
  _camvid_tree(tmp_path / "camvid")
  bad = tmp_path / "camvid" / "train" / "0001TP_train001.png"
  bad.write_bytes(b"not a png at all")
  with pytest.raises(base.BadExampleError, match="0001TP_train001.png: cannot read the image"):
    builders.prepare(_data(tmp_path / "camvid", tmp_path / "tfds"))


def test_unreadable_label_names_the_file(tmp_path):
  _camvid_tree(tmp_path / "camvid")
  bad = tmp_path / "camvid" / "valannot" / "0001TP_val001.png"
  bad.write_bytes(b"\x89PNG truncated")
  with pytest.raises(base.BadExampleError,
                     match="valannot/0001TP_val001.png: cannot read the label"):
    builders.prepare(_data(tmp_path / "camvid", tmp_path / "tfds"))


def test_image_and_label_of_different_sizes_name_the_file_and_sizes(tmp_path):
  _camvid_tree(tmp_path / "camvid")
  label_path = tmp_path / "camvid" / "valannot" / "0001TP_val000.png"
  write_png(str(label_path), np.zeros((10, 16), np.uint8))
  with pytest.raises(base.BadExampleError, match=r"0001TP_val000.png: label is 10x16 .* 12x16"):
    builders.prepare(_data(tmp_path / "camvid", tmp_path / "tfds"))


def test_label_values_outside_the_classes_name_the_file_and_values(tmp_path):
  _camvid_tree(tmp_path / "camvid")
  label_path = tmp_path / "camvid" / "trainannot" / "0001TP_train002.png"
  label = np.zeros((12, 16), np.uint8)
  label[0, :3] = (20, 37, 255)  # 255 is allowed (ignore); 20 and 37 are not
  write_png(str(label_path), label)
  with pytest.raises(base.BadExampleError, match=r"0001TP_train002.png: label values \[20, 37\]"):
    builders.prepare(_data(tmp_path / "camvid", tmp_path / "tfds"))


def test_colour_label_png_is_refused(tmp_path):
  _camvid_tree(tmp_path / "camvid")
  label_path = tmp_path / "camvid" / "trainannot" / "0001TP_train000.png"
  # CamVid's colour-coded labels (road is (128, 64, 128)); an RGB file whose channels
  # agree would be read as grey (a grey mask saved as RGB).
  write_png(str(label_path), np.broadcast_to(np.uint8([128, 64, 128]), (12, 16, 3)))
  with pytest.raises(base.BadExampleError, match="mode 'RGB'.*single-channel"):
    builders.prepare(_data(tmp_path / "camvid", tmp_path / "tfds"))


def test_missing_label_file_is_named(tmp_path):
  _camvid_tree(tmp_path / "camvid")
  os.remove(tmp_path / "camvid" / "trainannot" / "0001TP_train001.png")
  with pytest.raises(base.BadExampleError, match="trainannot/0001TP_train001.png is missing"):
    builders.prepare(_data(tmp_path / "camvid", tmp_path / "tfds"))


@pytest.mark.skipif(not os.path.isdir(SHARED_CAMVID),
                    reason="the shared CamVid copy (../shared/data/camvid) is not present")
def test_shared_camvid_copy_counts_classes_and_ignore(tmp_path):
  builder = builders.prepare(_data(SHARED_CAMVID, tmp_path / "tfds"))
  assert builder.info.splits["train"].num_examples == 367
  assert builder.info.splits["validation"].num_examples == 101
  histogram = np.zeros(12, np.int64)
  checked = 0
  for example in tfds.as_numpy(builder.as_dataset(split="validation")):
    histogram += example["label_histogram"]
    assert example["image"].shape == (360, 480, 3)
    if checked < 3:  # the stored label is the raw PNG with void (11) -> 255
      name = example["image_id"].decode() + ".png"
      raw = np.asarray(Image.open(os.path.join(SHARED_CAMVID, "valannot", name)))
      np.testing.assert_array_equal(example["label"], np.where(raw == 11, 255, raw))
      assert set(np.unique(example["label"])) <= set(range(11)) | {255}
      checked += 1
  assert np.all(histogram[:11] > 0), "all 11 classes occur in val"
  assert histogram[11] > 0, "void pixels are kept as 255"
