"""Pascal VOC 2012 with the SBD augmented labels: 21 classes, 10582 train / 1449 val.

Labels are read with PIL as palette indices: VOC's own label PNGs are palette images,
and decoding them as RGB would give colours, not class ids.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from cowmix_jax.data import base

CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "dining_table", "dog", "horse", "motorbike", "person",
               "potted_plant", "sheep", "sofa", "train", "tv_monitor")


def _voc_colour(index: int):
  """The VOC palette: bits of the index spread over the high bits of R, G and B."""
  red = green = blue = 0
  for shift in range(8):
    red |= ((index >> 0) & 1) << (7 - shift)
    green |= ((index >> 1) & 1) << (7 - shift)
    blue |= ((index >> 2) & 1) << (7 - shift)
    index >>= 3
  return (red, green, blue)


CLASS_COLOURS = tuple(_voc_colour(i) for i in range(len(CLASS_NAMES)))
LIST_LOCATIONS = ("ImageSets/SegmentationAug", "ImageSets/Segmentation", ".")
LABEL_DIRECTORIES = ("SegmentationClassAug", "SegmentationClass")
SPLIT_LISTS = {"train": "train_aug.txt", "validation": "val.txt"}

LAYOUT = """\
VOC_DIR/                         (or VOC_DIR/VOCdevkit/VOC2012/)
  JPEGImages/<id>.jpg
  SegmentationClassAug/<id>.png   (SBD + VOC labels, 0..20 and 255; VOC's palette PNGs in
                                   SegmentationClass/ are used for ids missing here)
  ImageSets/SegmentationAug/train_aug.txt   (10582 ids; also looked for in
  ImageSets/Segmentation/val.txt             ImageSets/Segmentation/ and VOC_DIR/)
A list line is an id ("2007_000032") or an image/label path pair
("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png")."""


def find_voc_root(directory: str) -> str:
  """The directory that holds ``JPEGImages`` (``directory`` or its VOCdevkit/VOC2012)."""
  for candidate in (directory, os.path.join(directory, "VOCdevkit", "VOC2012"),
                    os.path.join(directory, "VOC2012")):
    if os.path.isdir(os.path.join(candidate, "JPEGImages")):
      return candidate
  raise base.DatasetLayoutError(
      f"Pascal VOC: no JPEGImages/ in {directory!r} or its VOCdevkit/VOC2012/. Expected "
      f"layout:\n{LAYOUT}")


def find_list(root: str, file_name: str) -> str:
  for location in LIST_LOCATIONS:
    path = os.path.normpath(os.path.join(root, location, file_name))
    if os.path.isfile(path):
      return path
  tried = [os.path.normpath(os.path.join(root, loc, file_name)) for loc in LIST_LOCATIONS]
  raise base.DatasetLayoutError(f"Pascal VOC: the split list {file_name} is missing "
                                f"(looked for {tried}). Expected layout:\n{LAYOUT}")


def read_id_list(path: str) -> list[str]:
  """Image ids of a VOC split list (ids, or image/label path pairs)."""
  ids = []
  with open(path) as f:
    for line in f:
      fields = line.split()
      if fields:
        ids.append(os.path.splitext(os.path.basename(fields[0]))[0])
  if not ids:
    raise base.DatasetLayoutError(f"Pascal VOC: the split list {path} is empty")
  return ids


def find_label(root: str, image_id: str) -> str | None:
  for directory in LABEL_DIRECTORIES:
    path = os.path.join(root, directory, image_id + ".png")
    if os.path.isfile(path):
      return path
  return None


@base.DATASETS.register("pascal")
class VocAug(base.SegmentationBuilder):
  """Pascal VOC 2012 + SBD (the "aug" training set), from a local copy."""

  name = "cowmix_voc_aug"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "train_aug and val; palette labels read as ids."}
  LAYOUT = LAYOUT
  TITLE = "Pascal VOC"
  MANUAL_DIR_VARIABLE = "COWMIX_VOC_DIR"
  DESCRIPTION = "Pascal VOC 2012 segmentation with SBD's extra labels (train_aug / val)."
  CLASS_NAMES = CLASS_NAMES
  CLASS_COLOURS = CLASS_COLOURS

  def _split_generators(self, dl_manager):
    root = find_voc_root(self.require_directory(dl_manager.manual_dir))
    return {split: self._generate_examples(root, read_id_list(find_list(root, list_name)))
            for split, list_name in SPLIT_LISTS.items()}

  def _generate_examples(self, root: str, image_ids: list[str]):
    for image_id in image_ids:
      image_path = os.path.join(root, "JPEGImages", image_id + ".jpg")
      if not os.path.isfile(image_path):
        raise base.BadExampleError(f"Pascal VOC: {image_path} (listed in the split) is "
                                   f"missing")
      label_path = find_label(root, image_id)
      if label_path is None:
        raise base.BadExampleError(
            f"{image_path}: no label {image_id}.png in {LABEL_DIRECTORIES}")
      image, label = base.read_pair(image_path, label_path, len(CLASS_NAMES))
      yield image_id, base.labelled_example(image_id, image, label, len(CLASS_NAMES))
