"""Users' own data: a directory of images, optional label PNGs and a class list.

Images of ``train/images`` that have no label PNG form the ``unlabelled`` split (no
dummy mask needed); they join the unlabelled stream together with the train split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import List, Optional, Sequence, Tuple

import tensorflow_datasets as tfds

from cowmix_jax.data import base

CLASS_FILES = ("classes.json", "classes.txt")
SPLITS = ("train", "validation", "test")

LAYOUT = """\
DATA_DIR/
  classes.json   ["road", "car", ...] or [{"name": "road", "colour": [128, 64, 128]}, ...]
                 (or classes.txt: one class per line, "name" or "name R G B")
  train/images/  RGB images (.png, .jpg, ...); the file stem is the image id
  train/labels/  <id>.png single-channel class ids (0..C-1, 255 = ignore); optional:
                 train images without a label are used as unlabelled data
  validation/images/ and validation/labels/   (optional; every image needs a label)
  test/images/ and test/labels/               (optional; every image needs a label)"""


def read_classes(directory: str) -> Tuple[List[str], Optional[List[List[int]]]]:
  """Class names and colours (None when not given) from classes.json or classes.txt."""
  for file_name in CLASS_FILES:
    path = os.path.join(directory, file_name)
    if os.path.isfile(path):
      reader = _read_classes_json if file_name.endswith(".json") else _read_classes_text
      names, colours = reader(path)
      if not names:
        raise base.DatasetLayoutError(f"{path}: no classes listed")
      if len(names) > 255:
        raise base.DatasetLayoutError(f"{path}: {len(names)} classes; at most 255 fit in "
                                      f"uint8 labels with 255 = ignore")
      if colours is not None and len(colours) != len(names):
        raise base.DatasetLayoutError(f"{path}: give a colour for every class or for none")
      return names, colours
  raise base.DatasetLayoutError(f"folder dataset: no {' or '.join(CLASS_FILES)} in "
                                f"{directory!r}. Expected layout:\n{LAYOUT}")


def _check_colour(colour, path: str, name: str) -> List[int]:
  if (not isinstance(colour, (list, tuple)) or len(colour) != 3 or
      not all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
    raise base.DatasetLayoutError(f"{path}: class {name!r}: colour {colour!r} is not three "
                                  f"integers in 0..255")
  return list(colour)


def _read_classes_json(path: str):
  try:
    with open(path) as f:
      entries = json.load(f)
  except json.JSONDecodeError as error:
    raise base.DatasetLayoutError(f"{path}: not valid JSON ({error})") from error
  if not isinstance(entries, list):
    raise base.DatasetLayoutError(f"{path}: expected a JSON list of class names or of "
                                  f"{{'name': ..., 'colour': [r, g, b]}} objects")
  names, colours = [], []
  for entry in entries:
    if isinstance(entry, str):
      names.append(entry)
      colours.append(None)
    elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
      names.append(entry["name"])
      colour = entry.get("colour", entry.get("color"))
      colours.append(None if colour is None else _check_colour(colour, path, entry["name"]))
    else:
      raise base.DatasetLayoutError(f"{path}: entry {entry!r} is neither a name nor an "
                                    f"object with a 'name'")
  return names, _all_or_none(colours, path)


def _read_classes_text(path: str):
  names, colours = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) == 1:
        names.append(fields[0])
        colours.append(None)
      elif len(fields) == 4 and all(v.isdigit() for v in fields[1:]):
        names.append(fields[0])
        colours.append(_check_colour([int(v) for v in fields[1:]], path, fields[0]))
      else:
        raise base.DatasetLayoutError(f"{path}, line {number}: expected 'name' or "
                                      f"'name R G B', got {line.strip()!r}")
  return names, _all_or_none(colours, path)


def _all_or_none(colours, path):
  if all(c is None for c in colours):
    return None
  if any(c is None for c in colours):
    raise base.DatasetLayoutError(f"{path}: give a colour for every class or for none")
  return colours


def config_for_directory(directory: str) -> "FolderConfig":
  """A builder config named after the directory (its base name and a path hash), so
  that two datasets never share prepared files."""
  directory = os.path.abspath(directory)
  digest = hashlib.sha1(directory.encode()).hexdigest()[:8]
  stem = "".join(c if c.isalnum() else "_" for c in os.path.basename(directory)) or "root"
  return FolderConfig(name=f"{stem}_{digest}", directory=directory)


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  directory: str = ""


class SegmentationFolder(base.SegmentationBuilder):
  """A segmentation dataset read from a user's directory (see LAYOUT)."""

  name = "cowmix_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "train / unlabelled / validation / test from a directory."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT
  LAYOUT = LAYOUT
  DESCRIPTION = "A user's segmentation dataset from a directory of images and label PNGs."

  def __init__(self, *, directory: Optional[str] = None, config=None, **kwargs):
    if config is None:
      if directory is None:
        raise ValueError("SegmentationFolder needs the dataset directory")
      config = config_for_directory(directory)
    base.require_directory(config.directory, "folder dataset", LAYOUT)
    self._classes = read_classes(config.directory)
    super().__init__(config=config, **kwargs)

  def class_names(self) -> Sequence[str]:
    return self._classes[0]

  def class_colours(self):
    return self._classes[1]

  def _split_generators(self, dl_manager):
    root = self.builder_config.directory
    base.require_subdirectory(root, "train/images", "folder dataset", LAYOUT)
    generators = {}
    for split in SPLITS:
      image_dir = os.path.join(root, split, "images")
      if not os.path.isdir(image_dir):
        continue
      images = base.list_images(image_dir)
      if not images:
        raise base.DatasetLayoutError(f"folder dataset: no images in {image_dir!r}. "
                                      f"Expected layout:\n{LAYOUT}")
      labels = self._labels(root, split, images)
      generators[split] = self._generate_examples(
          [(i, images[i], labels[i]) for i in images if i in labels])
      unlabelled = [(i, images[i]) for i in images if i not in labels]
      if unlabelled and split != "train":
        raise base.BadExampleError(
            f"folder dataset: {len(unlabelled)} {split} image(s) have no label in "
            f"{os.path.join(root, split, 'labels')} (e.g. {unlabelled[0][1]}); only train "
            f"images may be unlabelled")
      if unlabelled:
        generators["unlabelled"] = self._generate_examples(
            [(i, path, None) for i, path in unlabelled])
    return generators

  def _labels(self, root: str, split: str, images) -> dict:
    label_dir = os.path.join(root, split, "labels")
    if not os.path.isdir(label_dir):
      return {}
    labels = {}
    for name in sorted(os.listdir(label_dir)):
      stem, suffix = os.path.splitext(name)
      if suffix.lower() != ".png":
        continue
      if stem not in images:
        raise base.BadExampleError(f"{os.path.join(label_dir, name)}: no image with the id "
                                   f"{stem!r} in {os.path.join(root, split, 'images')}")
      labels[stem] = os.path.join(label_dir, name)
    return labels

  def _generate_examples(self, items):
    """``items``: ``(image_id, image_path, label_path or None)``."""
    for image_id, image_path, label_path in items:
      if label_path is None:
        image, _ = base.decode_image(base.read_file(image_path), image_path)
        yield image_id, base.unlabelled_example(image_id, image, self.num_classes)
      else:
        image, label = base.read_pair(image_path, label_path, self.num_classes)
        yield image_id, base.labelled_example(image_id, image, label, self.num_classes)
