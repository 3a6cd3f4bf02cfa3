"""Tests of cowmix_jax/data/cityscapes.py: id mapping, label downsampling, trees and zips."""

import os
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cowmix_jax import config_base
from cowmix_jax.data import base, builders, cityscapes

from conftest import write_png

# The official label table (cityscapesScripts labels.py): labelId -> trainId, by hand.
OFFICIAL_TRAIN_IDS = {0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1,
                      9: 255, 10: 255, 11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5,
                      18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
                      27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18}
SIZE = (8, 16)


def write_tree(root, seed=0, size=SIZE):
  """Official layout, two cities in train, one in val; returns ``{id: (image, labelIds)}``."""
  rng = np.random.default_rng(seed)
  written = {}
  for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
    for city in cities:
      for frame in range(2):
        stem = f"{city}_000000_{frame:06d}"
        image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        label = rng.choice(np.array(list(OFFICIAL_TRAIN_IDS), np.uint8), size)
        write_png(os.path.join(root, "leftImg8bit", split, city, stem + "_leftImg8bit.png"),
                  image)
        write_png(os.path.join(root, "gtFine", split, city, stem + "_gtFine_labelIds.png"),
                  label)
        written[stem] = (image, label)
  return written


def _data(root, data_dir, builder_config):
  return config_base.get_data_config("cityscapes", manual_dir=str(root),
                                      data_dir=str(data_dir), builder_config=builder_config)


def _examples(builder, split):
  return {ex["image_id"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def _majority_by_loops(label, factor):
  """Independent reference: count each block's values one pixel at a time."""
  out = np.zeros((label.shape[0] // factor, label.shape[1] // factor), np.uint8)
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      counts = {}
      for value in label[i * factor:(i + 1) * factor, j * factor:(j + 1) * factor].ravel():
        counts[int(value)] = counts.get(int(value), 0) + 1
      best = max(counts.values())
      out[i, j] = min(v for v, c in counts.items() if c == best)
  return out


def test_full_resolution_maps_label_ids_to_train_ids(tmp_path):
  written = write_tree(tmp_path / "cs")
  builder = builders.prepare(_data(tmp_path / "cs", tmp_path / "tfds", "full"))
  assert builder.info.splits["train"].num_examples == 4
  assert builder.info.splits["validation"].num_examples == 2
  assert len(builder.info.metadata["class_names"]) == 19
  examples = {**_examples(builder, "train"), **_examples(builder, "validation")}
  for stem, (image, label_ids) in written.items():
    expected = np.vectorize(OFFICIAL_TRAIN_IDS.get)(label_ids).astype(np.uint8)
    np.testing.assert_array_equal(examples[stem]["label"], expected)
    np.testing.assert_array_equal(examples[stem]["image"], image)


def test_majority_vote_by_hand():
  label = np.array([[1, 1, 2, 3],
                    [1, 4, 2, 255],
                    [255, 255, 5, 6],
                    [255, 7, 6, 5]], np.uint8)
  # Blocks: {1,1,1,4} -> 1; {2,3,2,255} -> 2; {255,255,255,7} -> 255;
  # {5,6,6,5} is a tie -> the lower id, 5.
  np.testing.assert_array_equal(cityscapes.downsample_labels(label, 2, "majority"),
                                [[1, 2], [255, 5]])
  np.testing.assert_array_equal(cityscapes.downsample_labels(label, 2, "nearest"),
                                [[4, 255], [7, 5]])


def test_downsampling_rules_match_independent_references():
  rng = np.random.default_rng(1)
  label = rng.choice(np.array([0, 3, 7, 255], np.uint8), (24, 36))
  for factor in (2, 3, 4):
    np.testing.assert_array_equal(cityscapes.downsample_labels(label, factor, "majority"),
                                  _majority_by_loops(label, factor))
    pil = Image.fromarray(label).resize((36 // factor, 24 // factor), Image.NEAREST)
    np.testing.assert_array_equal(cityscapes.downsample_labels(label, factor, "nearest"),
                                  np.asarray(pil))
  with pytest.raises(ValueError, match="bilinear"):
    cityscapes.downsample_labels(label, 2, "bilinear")


def test_half_resolution_configs_use_their_label_rule(tmp_path):
  written = write_tree(tmp_path / "cs")
  for rule in ("majority", "nearest"):
    builder = builders.prepare(_data(tmp_path / "cs", tmp_path / "tfds", f"half_{rule}"))
    examples = _examples(builder, "train")
    for stem, example in examples.items():
      image, label_ids = written[stem]
      train_ids = np.vectorize(OFFICIAL_TRAIN_IDS.get)(label_ids).astype(np.uint8)
      np.testing.assert_array_equal(example["label"],
                                    cityscapes.downsample_labels(train_ids, 2, rule))
      box = image.astype(np.float64).reshape(4, 2, 8, 2, 3).mean(axis=(1, 3))
      assert np.abs(example["image"] - box).max() <= 1.0  # 2x2 box average, rounded


def test_official_zips_give_the_same_dataset_as_the_trees(tmp_path):
  write_tree(tmp_path / "cs")
  zipped = tmp_path / "zipped"
  zipped.mkdir()
  for top, archive in cityscapes.ZIPS.items():
    with zipfile.ZipFile(zipped / archive, "w") as z:
      for directory, _, files in os.walk(tmp_path / "cs" / top):
        for name in files:
          path = os.path.join(directory, name)
          z.write(path, os.path.relpath(path, tmp_path / "cs"))
      z.writestr("README", "official archives hold extra files")
  from_trees = _examples(builders.prepare(_data(tmp_path / "cs", tmp_path / "a", "full")),
                         "train")
  from_zips = _examples(builders.prepare(_data(zipped, tmp_path / "b", "full")), "train")
  assert set(from_trees) == set(from_zips)
  for stem in from_trees:
    np.testing.assert_array_equal(from_trees[stem]["label"], from_zips[stem]["label"])
    np.testing.assert_array_equal(from_trees[stem]["image"], from_zips[stem]["image"])


def test_unknown_label_ids_name_the_file(tmp_path):
  write_tree(tmp_path / "cs")
  path = (tmp_path / "cs" / "gtFine" / "val" / "frankfurt" /
          "frankfurt_000000_000001_gtFine_labelIds.png")
  label = np.full(SIZE, 7, np.uint8)
  label[0, 0] = 40
  write_png(str(path), label)
  with pytest.raises(base.BadExampleError, match=r"frankfurt_000000_000001_gtFine_labelIds.png: "
                                                 r"label values \[40\]"):
    builders.prepare(_data(tmp_path / "cs", tmp_path / "tfds", "full"))


def test_missing_trees_and_zips_show_the_layout(tmp_path):
  (tmp_path / "cs").mkdir()
  (tmp_path / "cs" / "something_else").mkdir()
  with pytest.raises(base.DatasetLayoutError, match="(?s)leftImg8bit.*gtFine_trainvaltest.zip"):
    builders.prepare(_data(tmp_path / "cs", tmp_path / "tfds", "full"))
