"""What every segmentation builder shares: features, metadata, checked image and label reads.

Every builder stores examples with the same features:

- ``image``: uint8 ``[H, W, 3]`` (the source PNG/JPEG bytes when they already are RGB);
- ``label``: uint8 ``[H, W]`` class ids, 255 = ignore (``[0, 0]`` in an ``unlabelled`` split);
- ``image_id``: the file stem, the key of labelled-subset lists;
- ``label_histogram``: int64 ``[C + 1]`` pixels per class, the last entry counting 255.

Class names and colours live in ``builder.info.metadata``.
"""

from __future__ import annotations

import inspect
import io
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from cowmix_jax.conventions import IGNORE_LABEL
from cowmix_jax.registry import Registry

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetLayoutError(FileNotFoundError):
  """A dataset directory is missing or does not have the expected layout."""


class BadExampleError(ValueError):
  """An image or label file cannot be used; the message names the file."""


def require_directory(path, dataset: str, layout: str) -> str:
  """Returns ``path`` if it is a directory, else raises with the expected layout."""
  if not path:
    raise DatasetLayoutError(
        f"{dataset}: no dataset directory given. Set config.data.manual_dir (or its "
        f"environment variable). Expected layout:\n{layout}")
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise DatasetLayoutError(
        f"{dataset}: dataset directory {path!r} does not exist or is not a directory. "
        f"Expected layout:\n{layout}")
  if not os.listdir(path):
    raise DatasetLayoutError(f"{dataset}: dataset directory {path!r} is empty. Expected "
                             f"layout:\n{layout}")
  return path


def require_subdirectory(root: str, relative: str, dataset: str, layout: str) -> str:
  """``root/relative`` if it is a directory, else an error that shows the layout."""
  path = os.path.join(root, relative)
  if not os.path.isdir(path):
    present = sorted(os.listdir(root))[:20]
    raise DatasetLayoutError(
        f"{dataset}: expected the directory {path!r}, which is missing ({root!r} holds "
        f"{present}). Expected layout:\n{layout}")
  return path


def list_images(directory: str) -> dict[str, str]:
  """``{stem: path}`` of the image files in ``directory`` (not recursive), sorted."""
  found = {}
  for name in sorted(os.listdir(directory)):
    stem, suffix = os.path.splitext(name)
    if suffix.lower() in IMAGE_SUFFIXES:
      if stem in found:
        raise BadExampleError(f"{directory}: two images share the id {stem!r}: "
                              f"{os.path.basename(found[stem])} and {name}")
      found[stem] = os.path.join(directory, name)
  return found


def _open(data: bytes, name: str, what: str) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Image.UnidentifiedImageError:  # its message names an in-memory buffer
    raise BadExampleError(f"{name}: cannot read the {what}: not an image format PIL "
                          "knows (a corrupt or mislabelled file?)") from None
  except Exception as error:  # PIL raises many types for corrupt files
    raise BadExampleError(f"{name}: cannot read the {what}: {error}") from error
  return image


def read_file(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as error:
    raise BadExampleError(f"{path}: cannot read the file: {error}") from error


def decode_image(data: bytes, name: str) -> tuple[object, tuple[int, int]]:
  """Checks an encoded image; returns what to store and its ``(H, W)``.

  RGB PNG and JPEG bytes are stored as they are (no re-encoding); anything else
  (grey, palette, RGBA, other formats) is converted to an RGB uint8 array.
  """
  image = _open(data, name, "image")
  size = (image.height, image.width)
  if image.mode == "RGB" and image.format in ("PNG", "JPEG"):
    return data, size
  return np.asarray(image.convert("RGB"), np.uint8), size


def image_array(data: bytes, name: str) -> np.ndarray:
  """Decoded RGB image, uint8 ``[H, W, 3]``."""
  return np.asarray(_open(data, name, "image").convert("RGB"), np.uint8)


def decode_label(data: bytes, name: str) -> np.ndarray:
  """A label image's values, uint8 ``[H, W]``.

  Palette PNGs give their palette indices (the class ids), not the palette colours; an
  RGB image whose channels agree (a grey mask saved as RGB, JPEG noise allowed) gives
  their mean.
  """
  image = _open(data, name, "label")
  if image.mode in ("L", "P"):
    return np.asarray(image, np.uint8)
  if image.mode in ("I", "I;16", "I;16B", "I;16L"):
    values = np.asarray(image)
    if values.min() < 0 or values.max() > 255:
      raise BadExampleError(f"{name}: label values {values.min()}..{values.max()} do not "
                            f"fit in 0..255")
    return values.astype(np.uint8)
  if image.mode == "RGB":
    grey = _grey_of_rgb(np.asarray(image, np.int16))
    if grey is not None:
      return grey
  raise BadExampleError(
      f"{name}: label image has mode {image.mode!r}; expected a single-channel image of "
      f"class ids or values (mode L or P, or RGB with three equal channels), not colours")


# JPEG's chroma noise around grey pixels stays well below this.
GREY_TOLERANCE = 32


def _grey_of_rgb(rgb: np.ndarray) -> np.ndarray | None:
  """uint8 ``[H, W]`` channel mean of an int ``[H, W, 3]`` image whose channels agree
  within GREY_TOLERANCE everywhere (a grey mask saved as RGB); None otherwise."""
  if int(np.max(rgb.max(axis=-1) - rgb.min(axis=-1), initial=0)) > GREY_TOLERANCE:
    return None
  return np.round(rgb.mean(axis=-1)).astype(np.uint8)


def check_label(label: np.ndarray, name: str, num_classes: int,
                image_size: tuple[int, int] | None = None) -> np.ndarray:
  """Raises naming ``name`` when the label's size or values are wrong; returns it."""
  if image_size is not None and tuple(label.shape) != tuple(image_size):
    raise BadExampleError(f"{name}: label is {label.shape[0]}x{label.shape[1]} (HxW) but "
                          f"its image is {image_size[0]}x{image_size[1]}")
  values = np.unique(label)
  bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
  if bad.size:
    raise BadExampleError(
        f"{name}: label values {bad.tolist()} are outside the {num_classes} classes "
        f"(0..{num_classes - 1}) and are not the ignore value {IGNORE_LABEL}")
  return label


def label_histogram(label: np.ndarray, num_classes: int) -> np.ndarray:
  """int64 ``[C + 1]``: pixels of each class, and of the ignore label last."""
  counts = np.bincount(label.ravel(), minlength=256).astype(np.int64)
  return np.concatenate([counts[:num_classes], counts[IGNORE_LABEL:IGNORE_LABEL + 1]])


def features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "label": tfds.features.Tensor(shape=(None, None), dtype=np.uint8,
                                    encoding=tfds.features.Encoding.ZLIB),
      "image_id": tfds.features.Text(),
      "label_histogram": tfds.features.Tensor(shape=(None,), dtype=np.int64),
  })


def metadata(class_names: Sequence[str],
             class_colours: Sequence[Sequence[int]] | None) -> tfds.core.MetadataDict:
  return tfds.core.MetadataDict(class_names=list(class_names),
                                class_colours=[list(map(int, c)) for c in class_colours]
                                if class_colours else None)


def labelled_example(image_id: str, image, label: np.ndarray, num_classes: int) -> dict:
  return {"image": image, "label": label, "image_id": image_id,
          "label_histogram": label_histogram(label, num_classes)}


def unlabelled_example(image_id: str, image, num_classes: int) -> dict:
  return {"image": image, "label": np.zeros((0, 0), np.uint8), "image_id": image_id,
          "label_histogram": np.zeros(num_classes + 1, np.int64)}


def read_pair(image_path: str, label_path: str, num_classes: int,
              label_map: np.ndarray | None = None) -> tuple[object, np.ndarray]:
  """Reads and checks one image and its label; ``label_map`` is a 256-entry lookup."""
  image, size = decode_image(read_file(image_path), image_path)
  label = decode_label(read_file(label_path), label_path)
  if label_map is not None:
    check_raw_values(label, label_map, label_path)
    label = label_map[label].astype(np.uint8)
  return image, check_label(label, label_path, num_classes, size)


def check_raw_values(label: np.ndarray, label_map: np.ndarray, name: str) -> None:
  """Raw label values must be known to ``label_map`` (entries < 0 mark unknown values)."""
  values = np.unique(label)
  bad = values[label_map.astype(np.int64)[values] < 0]
  if bad.size:
    known = np.flatnonzero(label_map >= 0)
    raise BadExampleError(f"{name}: label values {bad.tolist()} are not valid for this "
                          f"dataset (expected values in {known.min()}..{known.max()})")


def lookup_table(mapping: dict[int, int], valid: Sequence[int]) -> np.ndarray:
  """256-entry int16 table: ``mapping`` for its keys, 255 for other ``valid`` values,
  -1 (an error when met) for the rest."""
  table = np.full(256, -1, np.int16)
  table[list(valid)] = IGNORE_LABEL
  for raw, mapped in mapping.items():
    table[raw] = mapped
  return table


# ``@DATASETS.register("name")`` on a SegmentationBuilder subclass: ``config.data.name``.
DATASETS: Registry[type[SegmentationBuilder]] = Registry("config.data.name", "datasets")


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders: features, class metadata, the layout text, and how a
  ``config.data`` makes one (:meth:`from_config`)."""

  CLASS_NAMES: Sequence[str] = ()
  CLASS_COLOURS: Sequence[Sequence[int]] | None = None
  DESCRIPTION = ""
  # The expected folder layout, shown by every layout error (and as tfds's manual
  # download instructions); TITLE names the dataset in those errors.
  LAYOUT = ""
  TITLE = ""
  # The environment variable naming the dataset's directory when config.data.manual_dir
  # is empty; None for a dataset that reads no files.
  MANUAL_DIR_VARIABLE: str | None = None

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    # tfds reads metadata files (none here) from the builder's package, and so would
    # fail for a builder defined in a top-level module (docs/DEVELOPING.md): the
    # directory of the defining file is that place for every builder.
    cls.pkg_dir_path = epath.Path(os.path.dirname(os.path.abspath(inspect.getfile(cls))))
    if cls.LAYOUT and "MANUAL_DOWNLOAD_INSTRUCTIONS" not in cls.__dict__:
      cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls.LAYOUT

  @classmethod
  def layout_error(cls, problem: str) -> DatasetLayoutError:
    """``TITLE: problem. Expected layout: LAYOUT`` as an error to raise."""
    return DatasetLayoutError(f"{cls.TITLE or cls.__name__}: {problem}. Expected "
                              f"layout:\n{cls.LAYOUT}")

  @classmethod
  def require_directory(cls, path) -> str:
    """``path`` if it is a non-empty directory, else a layout error."""
    return require_directory(path, cls.TITLE or cls.__name__, cls.LAYOUT)

  @classmethod
  def require_subdirectory(cls, root: str, relative: str) -> str:
    """``root/relative`` if it is a directory, else a layout error."""
    return require_subdirectory(root, relative, cls.TITLE or cls.__name__, cls.LAYOUT)

  @classmethod
  def images_in(cls, directory: str) -> dict[str, str]:
    """``{stem: path}`` of the images in ``directory``; a layout error when none."""
    images = list_images(directory)
    if not images:
      raise cls.layout_error(f"no images in {directory!r}")
    return images

  @classmethod
  def from_config(cls, data, data_dir: str | None,
                  directory: str | None) -> SegmentationBuilder:
    """The builder ``config.data`` asks for, its files in ``directory`` (checked to
    exist already; None when MANUAL_DIR_VARIABLE is None), prepared into ``data_dir``."""
    return cls(data_dir=data_dir)

  def class_names(self) -> Sequence[str]:
    return self.CLASS_NAMES

  def class_colours(self):
    return self.CLASS_COLOURS

  @property
  def num_classes(self) -> int:
    return len(self.class_names())

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION, features=features(),
        metadata=metadata(self.class_names(), self.class_colours()))
