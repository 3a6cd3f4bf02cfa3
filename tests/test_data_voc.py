"""Tests of cowmix_jax/data/voc.py: the VOC + SBD layout and palette label PNGs."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cowmix_jax import config_base
from cowmix_jax.data import base, builders, voc

from conftest import write_png

SIZE = (10, 14)


def _palette():
  palette = []
  for colour in voc.CLASS_COLOURS + tuple((0, 0, 0) for _ in range(256 - 21)):
    palette.extend(colour)
  palette[255 * 3:256 * 3] = (224, 224, 192)  # VOC's boundary colour
  return palette


def write_tree(root, seed=0, size=SIZE):
  """VOCdevkit/VOC2012 with SBD labels (grey PNGs) for train_aug and VOC palette PNGs
  for val; returns ``{id: (image, label)}``."""
  rng = np.random.default_rng(seed)
  voc_root = os.path.join(root, "VOCdevkit", "VOC2012")
  written = {}
  train_ids = ["2007_000032", "2008_000002", "2011_003276"]
  val_ids = ["2007_000033", "2007_000042"]
  for image_id in train_ids + val_ids:
    image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    label = rng.choice(np.array(list(range(21)) + [255], np.uint8), size)
    os.makedirs(os.path.join(voc_root, "JPEGImages"), exist_ok=True)
    Image.fromarray(image).save(os.path.join(voc_root, "JPEGImages", image_id + ".jpg"),
                                quality=95)
    if image_id in train_ids:
      write_png(os.path.join(voc_root, "SegmentationClassAug", image_id + ".png"), label)
    else:
      write_png(os.path.join(voc_root, "SegmentationClass", image_id + ".png"), label,
                palette=_palette())
    written[image_id] = (image, label)
  lists = os.path.join(voc_root, "ImageSets")
  os.makedirs(os.path.join(lists, "SegmentationAug"))
  os.makedirs(os.path.join(lists, "Segmentation"))
  with open(os.path.join(lists, "SegmentationAug", "train_aug.txt"), "w") as f:
    f.writelines(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in train_ids)
  with open(os.path.join(lists, "Segmentation", "val.txt"), "w") as f:
    f.writelines(f"{i}\n" for i in val_ids)
  return written


def _data(root, data_dir):
  return config_base.get_data_config("pascal", manual_dir=str(root),
                                      data_dir=str(data_dir))


def test_palette_labels_decode_to_class_ids_not_colours(tmp_path):
  write_png(str(tmp_path / "p.png"), np.array([[0, 1, 15], [20, 255, 3]]), palette=_palette())
  with open(tmp_path / "p.png", "rb") as f:
    data = f.read()
  np.testing.assert_array_equal(base.decode_label(data, "p.png"), [[0, 1, 15], [20, 255, 3]])
  # The trap: the same file decoded as RGB gives the palette colours.
  rgb = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
  np.testing.assert_array_equal(rgb[0, 1], (128, 0, 0))


def test_voc_aug_builder_reads_lists_images_and_both_label_kinds(tmp_path):
  written = write_tree(tmp_path / "voc")
  # The parent of VOCdevkit is accepted as well as VOC2012 itself.
  builder = builders.prepare(_data(tmp_path / "voc", tmp_path / "tfds"))
  assert builder.info.splits["train"].num_examples == 3
  assert builder.info.splits["validation"].num_examples == 2
  assert builder.info.metadata["class_colours"][1] == [128, 0, 0]
  for split in ("train", "validation"):
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      image, label = written[example["image_id"].decode()]
      np.testing.assert_array_equal(example["label"], label)
      assert example["image"].shape == SIZE + (3,)
  # JPEG bytes are stored as they are (no second lossy encoding).
  encoded = builder.as_dataset(split="train",
                               decoders={"image": tfds.decode.SkipDecoding()})
  for example in tfds.as_numpy(encoded):
    path = os.path.join(tmp_path, "voc", "VOCdevkit", "VOC2012", "JPEGImages",
                        example["image_id"].decode() + ".jpg")
    with open(path, "rb") as f:
      assert example["image"] == f.read()


def test_voc_root_given_directly(tmp_path):
  write_tree(tmp_path / "voc")
  root = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
  builder = builders.prepare(_data(root, tmp_path / "tfds"))
  assert builder.info.splits["train"].num_examples == 3


def test_missing_list_names_where_it_was_looked_for(tmp_path):
  write_tree(tmp_path / "voc")
  os.remove(tmp_path / "voc" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" /
            "val.txt")
  with pytest.raises(base.DatasetLayoutError, match="(?s)val.txt is missing.*ImageSets"):
    builders.prepare(_data(tmp_path / "voc", tmp_path / "tfds"))


def test_not_a_voc_directory(tmp_path):
  (tmp_path / "voc").mkdir()
  with pytest.raises(base.DatasetLayoutError, match="(?s)voc' is empty.*SegmentationClassAug"):
    builders.prepare(_data(tmp_path / "voc", tmp_path / "tfds"))
  (tmp_path / "voc" / "Annotations").mkdir()
  with pytest.raises(base.DatasetLayoutError, match="(?s)no JPEGImages.*SegmentationClassAug"):
    builders.prepare(_data(tmp_path / "voc", tmp_path / "tfds"))
