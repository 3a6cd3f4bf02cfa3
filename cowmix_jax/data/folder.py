"""Users' own data: a directory of images, optional label masks and a class list.

Images of ``train/images`` that have no label form the ``unlabelled`` split (no dummy
mask needed); they join the unlabelled stream together with the train split.

Label files hold, per pixel, either the class id (0..C-1, 255 = ignore) or, when
classes.json gives each class a ``value``, that value (e.g. 0/255 binary masks). Label
files in a lossy format (JPEG) are snapped to the nearest listed value; lossless ones
must hold listed values only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from cowmix_jax.data import base
from cowmix_jax.models.pretrained import sha256_of

CLASS_FILES = ("classes.json", "classes.txt")
SPLITS = ("train", "validation", "test")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
# The 0/255-mask check: a class (nearly) absent from every train label while "ignore"
# covers at least this share of the labelled pixels, or while the labels hold as many
# values as there are classes, 255 among them (check_classes_present).
ABSENT_CLASS_SHARE = 1e-3
SUSPICIOUS_IGNORE_SHARE = 0.2

LAYOUT = """\
DATA_DIR/
  classes.json   ["road", "car", ...] or [{"name": "road", "colour": [128, 64, 128]}, ...]
                 or, for masks that store other values than the class ids (0/255 masks):
                 [{"name": "background", "value": 0}, {"name": "lesion", "value": 255}]
                 (or classes.txt: one class per line, "name" or "name R G B")
  train/images/  RGB or grey images (.png, .jpg, ...); the file stem is the image id
  train/labels/  <id>.png (or .jpg, snapped to the nearest value) single-channel masks:
                 class ids (0..C-1, 255 = ignore) or the values of classes.json;
                 optional: train images without a label are used as unlabelled data
  validation/images/ and validation/labels/   (optional; every image needs a label)
  test/images/ and test/labels/               (optional; every image needs a label)"""


@dataclasses.dataclass(frozen=True)
class ClassList:
  """What classes.json / classes.txt says.

  ``values``: the pixel value of each class in the label files; None when the files
  hold the class ids themselves.
  """
  names: list[str]
  colours: list[list[int]] | None = None
  values: list[int] | None = None

  def value_table(self) -> np.ndarray:
    """int16 ``[256]``: label-file value -> class id; 255 (ignore) for 255 when no class
    has that value; -1 for values no class has (an error in lossless files)."""
    table = np.full(256, -1, np.int16)
    table[base.IGNORE_LABEL] = base.IGNORE_LABEL
    values = self.values if self.values is not None else range(len(self.names))
    for class_id, value in enumerate(values):
      table[value] = class_id
    return table

  def snap_table(self) -> np.ndarray:
    """int16 ``[256]``: every value -> the class (or ignore) of the nearest known value;
    for lossy label files (ties go to the lower value)."""
    table = self.value_table()
    known = np.flatnonzero(table >= 0)
    nearest = known[np.argmin(np.abs(np.arange(256)[:, None] - known[None, :]), axis=1)]
    return table[nearest]


def read_classes(directory: str) -> ClassList:
  """The class list from classes.json or classes.txt in ``directory``."""
  for file_name in CLASS_FILES:
    path = os.path.join(directory, file_name)
    if os.path.isfile(path):
      reader = _read_classes_json if file_name.endswith(".json") else _read_classes_text
      classes = reader(path)
      if not classes.names:
        raise base.DatasetLayoutError(f"{path}: no classes listed")
      limit = 256 if classes.values is not None else 255
      if len(classes.names) > limit:
        raise base.DatasetLayoutError(f"{path}: {len(classes.names)} classes; at most 255 "
                                      f"fit in uint8 labels with 255 = ignore")
      return classes
  raise base.DatasetLayoutError(f"folder dataset: no {' or '.join(CLASS_FILES)} in "
                                f"{directory!r}. Expected layout:\n{LAYOUT}")


def _check_colour(colour, path: str, name: str) -> list[int]:
  if (not isinstance(colour, (list, tuple)) or len(colour) != 3 or
      not all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
    raise base.DatasetLayoutError(f"{path}: class {name!r}: colour {colour!r} is not three "
                                  f"integers in 0..255")
  return list(colour)


def _check_value(value, path: str, name: str) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
    raise base.DatasetLayoutError(f"{path}: class {name!r}: value {value!r} is not an "
                                  f"integer in 0..255 (the pixel value of the class in "
                                  f"the label files)")
  return value


def _read_classes_json(path: str) -> ClassList:
  try:
    with open(path) as f:
      entries = json.load(f)
  except json.JSONDecodeError as error:
    raise base.DatasetLayoutError(f"{path}: not valid JSON ({error})") from error
  if not isinstance(entries, list):
    raise base.DatasetLayoutError(f"{path}: expected a JSON list of class names or of "
                                  f"{{'name': ..., 'colour': [r, g, b], 'value': v}} "
                                  f"objects")
  names, colours, values = [], [], []
  for entry in entries:
    if isinstance(entry, str):
      names.append(entry)
      colours.append(None)
      values.append(None)
    elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
      name = entry["name"]
      unknown = sorted(set(entry) - {"name", "colour", "color", "value"})
      if unknown:
        raise base.DatasetLayoutError(f"{path}: class {name!r}: unknown keys {unknown} "
                                      f"(expected name, colour, value)")
      names.append(name)
      colour = entry.get("colour", entry.get("color"))
      colours.append(None if colour is None else _check_colour(colour, path, name))
      value = entry.get("value")
      values.append(None if value is None else _check_value(value, path, name))
    else:
      raise base.DatasetLayoutError(f"{path}: entry {entry!r} is neither a name nor an "
                                    f"object with a 'name'")
  values = _all_or_none(values, path, "value")
  if values is not None and len(set(values)) != len(values):
    repeated = sorted({v for v in values if values.count(v) > 1})
    raise base.DatasetLayoutError(f"{path}: classes share the values {repeated}; give "
                                  f"each class its own pixel value")
  return ClassList(names, _all_or_none(colours, path, "colour"), values)


def _read_classes_text(path: str) -> ClassList:
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
  return ClassList(names, _all_or_none(colours, path, "colour"))


def _all_or_none(entries, path, key):
  if all(e is None for e in entries):
    return None
  if any(e is None for e in entries):
    raise base.DatasetLayoutError(f"{path}: give a {key} for every class or for none")
  return entries


@dataclasses.dataclass
class LabelScan:
  """Pixel counts of one split's label files, before any example is written.

  ``class_pixels``: int64 ``[C + 1]`` per class, ignore last (after snapping);
  ``raw_pixels``: int64 ``[256]`` per value in the files; ``snapped``: pixels of lossy
  files whose value no class has; ``lossy_files``: how many files were lossy.
  """
  class_pixels: np.ndarray
  raw_pixels: np.ndarray
  snapped: int = 0
  lossy_files: int = 0


def is_lossy(label_path: str) -> bool:
  return os.path.splitext(label_path)[1].lower() in LOSSY_SUFFIXES


def read_label(label_path: str, classes: ClassList) -> tuple[np.ndarray, np.ndarray]:
  """The class ids of one label file, uint8 ``[H, W]``, and its raw values; a lossless
  file with a value no class has raises, naming the file and the values."""
  raw = base.decode_label(base.read_file(label_path), label_path)
  table = classes.snap_table() if is_lossy(label_path) else classes.value_table()
  bad = np.unique(raw[table[raw] < 0])
  if bad.size:
    num_classes = len(classes.names)
    if classes.values is None:
      raise base.BadExampleError(
          f"{label_path}: label values {bad.tolist()} are outside the {num_classes} "
          f"classes (0..{num_classes - 1}) and are not the ignore value "
          f"{base.IGNORE_LABEL}")
    raise base.BadExampleError(
        f"{label_path}: label values {bad.tolist()} are not among the classes' values "
        f"{classes.values} in classes.json (nor {base.IGNORE_LABEL} = ignore)")
  return table[raw].astype(np.uint8), raw


def scan_labels(label_paths: Sequence[str], classes: ClassList) -> LabelScan:
  """Reads every label file once; see LabelScan."""
  num_classes = len(classes.names)
  exact = classes.value_table()
  scan = LabelScan(np.zeros(num_classes + 1, np.int64), np.zeros(256, np.int64))
  for path in label_paths:
    label, raw = read_label(path, classes)
    scan.class_pixels += base.label_histogram(label, num_classes)
    scan.raw_pixels += np.bincount(raw.ravel(), minlength=256)
    if is_lossy(path):
      scan.lossy_files += 1
      scan.snapped += int(np.count_nonzero(exact[raw] < 0))
  return scan


def check_classes_present(scan: LabelScan, classes: ClassList, directory: str) -> None:
  """Stops a build whose train labels look misread: a class (nearly) absent while 255
  (ignore) covers much of the pixels is the signature of 0/255 masks read as class ids.
  Not applied when classes.json gives the values (the user said what they are)."""
  total = int(scan.class_pixels.sum())
  if classes.values is not None or total == 0:
    return
  ignored = scan.class_pixels[-1] / total
  absent = [name for name, pixels in zip(classes.names, scan.class_pixels[:-1])
            if pixels / total < ABSENT_CLASS_SHARE]
  common = [int(v) for v in np.flatnonzero(scan.raw_pixels >= ABSENT_CLASS_SHARE * total)]
  # As many common values as classes, 255 among them: one value per class, as 0/255
  # masks store them, whatever the foreground's share.
  one_value_per_class = base.IGNORE_LABEL in common and len(common) == len(classes.names)
  if not absent or (ignored < SUSPICIOUS_IGNORE_SHARE and not one_value_per_class):
    return
  if len(common) == len(classes.names):
    suggestion = [{"name": name, "value": value} for name, value in zip(classes.names, common)]
  else:
    suggestion = [{"name": name, "value": "V"} for name in classes.names]
  raise base.BadExampleError(
      f"folder dataset {directory}: class(es) {absent} occur in (almost) no train label "
      f"while the value {base.IGNORE_LABEL} (ignore) covers {100 * ignored:.1f}% of the "
      f"labelled pixels; the label files mostly hold the values {common}. The masks "
      f"probably store each class as another value than its id, as 0/255 binary masks "
      f"do. Give each class its pixel value in {os.path.join(directory, 'classes.json')}:"
      f"\n  {json.dumps(suggestion)}\n(Listing the values also turns this check off, "
      f"if the classes really are absent.)")


def folder_fingerprint(directory: str) -> str:
  """A hash of what the dataset is made of: the class list's bytes and the relative name
  and content of every file of its splits. Adding, removing, renaming or editing an
  image or a label changes it; moving or copying the folder (a new path, new
  modification times) does not. Reads every file once (about a second per GB)."""
  directory = os.path.abspath(directory)
  digest = hashlib.sha1()
  for file_name in CLASS_FILES:
    path = os.path.join(directory, file_name)
    if os.path.isfile(path):
      with open(path, "rb") as f:
        digest.update(file_name.encode() + b"\0" + f.read())
  for split in SPLITS:
    for root, dirs, files in os.walk(os.path.join(directory, split)):
      dirs.sort()
      for name in sorted(files):
        path = os.path.join(root, name)
        digest.update(f"{os.path.relpath(path, directory)}\0{sha256_of(path)}\n".encode())
  return digest.hexdigest()


def config_for_directory(directory: str) -> FolderConfig:
  """A builder config named after the directory's content (``folder_fingerprint``), so
  that a folder whose files or classes.json changed is prepared anew, never read stale,
  and a folder moved or copied elsewhere is the same dataset (its runs resume)."""
  directory = os.path.abspath(directory)
  return FolderConfig(name=f"content_{folder_fingerprint(directory)[:12]}",
                      directory=directory)


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  directory: str = ""


@base.DATASETS.register("folder")
class SegmentationFolder(base.SegmentationBuilder):
  """A segmentation dataset read from a user's directory (see LAYOUT)."""

  name = "cowmix_folder"
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "train / unlabelled / validation / test from a directory.",
                   "1.1.0": "Class values in classes.json; JPEG masks snapped to them.",
                   "1.2.0": "Prepared copies named by content only (not path or times)."}
  LAYOUT = LAYOUT
  TITLE = "folder dataset"
  MANUAL_DIR_VARIABLE = "COWMIX_FOLDER_DIR"
  DESCRIPTION = "A user's segmentation dataset from a directory of images and label PNGs."

  @classmethod
  def from_config(cls, data, data_dir, directory):
    """One dataset (and one prepared copy) per directory and class list."""
    return cls(directory=directory, data_dir=data_dir)

  def __init__(self, *, directory: str | None = None, config=None, **kwargs):
    if config is None:
      if directory is None:
        raise ValueError("SegmentationFolder needs the dataset directory")
      config = config_for_directory(directory)
    self.require_directory(config.directory)
    self._classes = read_classes(config.directory)
    super().__init__(config=config, **kwargs)

  def class_names(self) -> Sequence[str]:
    return self._classes.names

  def class_colours(self):
    return self._classes.colours

  def _split_generators(self, dl_manager):
    root = self.builder_config.directory
    self.require_subdirectory(root, "train/images")
    generators = {}
    for split in SPLITS:
      image_dir = os.path.join(root, split, "images")
      if not os.path.isdir(image_dir):
        continue
      images = self.images_in(image_dir)
      labels = self._labels(root, split, images)
      self._check_labels(split, sorted(labels.values()))
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

  def _labels(self, root: str, split: str, images) -> dict[str, str]:
    """``{image id: label file}`` of ``split`` (label files of any image format)."""
    label_dir = os.path.join(root, split, "labels")
    if not os.path.isdir(label_dir):
      return {}
    labels = base.list_images(label_dir)
    for stem, path in labels.items():
      if stem not in images:
        raise base.BadExampleError(f"{path}: no image with the id {stem!r} in "
                                   f"{os.path.join(root, split, 'images')}")
    return labels

  def _check_labels(self, split: str, label_paths: Sequence[str]) -> None:
    """Reads every label of ``split`` before any example is written: bad values stop
    the build, snapped pixels are logged, and the train labels must not look misread
    (check_classes_present)."""
    scan = scan_labels(label_paths, self._classes)
    if scan.lossy_files:
      total = int(scan.class_pixels.sum())
      logging.info("folder dataset, %s: %d lossy (JPEG) label file(s); %d of %d pixels "
                   "(%.2f%%) held no class value and were snapped to the nearest one.",
                   split, scan.lossy_files, scan.snapped, total,
                   100 * scan.snapped / max(total, 1))
    if split == "train":
      check_classes_present(scan, self._classes, self.builder_config.directory)

  def _generate_examples(self, items):
    """``items``: ``(image_id, image_path, label_path or None)``."""
    for image_id, image_path, label_path in items:
      image, size = base.decode_image(base.read_file(image_path), image_path)
      if label_path is None:
        yield image_id, base.unlabelled_example(image_id, image, self.num_classes)
      else:
        label, _ = read_label(label_path, self._classes)
        base.check_label(label, label_path, self.num_classes, size)
        yield image_id, base.labelled_example(image_id, image, label, self.num_classes)
