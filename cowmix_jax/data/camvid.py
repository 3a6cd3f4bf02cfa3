"""CamVid in the SegNet layout (Brostow et al., 2008): 11 classes, 480x360, void -> 255."""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from cowmix_jax.data import base

CLASS_NAMES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence",
               "car", "pedestrian", "bicyclist")
CLASS_COLOURS = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128),
                 (60, 40, 222), (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128),
                 (64, 64, 0), (0, 128, 192))
VOID = 11
# Raw label values 0..10 are classes; 11 (void) becomes the ignore label.
LABEL_MAP = base.lookup_table({i: i for i in range(len(CLASS_NAMES))}, valid=[VOID, 255])
SPLIT_DIRECTORIES = {"train": ("train", "trainannot"),
                     "validation": ("val", "valannot"),
                     "test": ("test", "testannot")}
OPTIONAL_SPLITS = ("test",)

LAYOUT = """\
CAMVID_DIR/               (the SegNet tutorial's CamVid folder)
  train/       367 RGB images, e.g. 0001TP_006690.png (480x360)
  trainannot/  one label PNG per image, same file name, values 0..10 and 11 = void
  val/         101 images
  valannot/
  test/        233 images (optional: the test split is built when present)
  testannot/"""


@base.DATASETS.register("camvid")
class CamVid(base.SegmentationBuilder):
  """CamVid from a local copy in the SegNet layout."""

  name = "cowmix_camvid"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "SegNet layout; void (11) mapped to 255."}
  LAYOUT = LAYOUT
  TITLE = "CamVid"
  MANUAL_DIR_VARIABLE = "COWMIX_CAMVID_DIR"
  DESCRIPTION = "CamVid road scenes, SegNet split and 11 classes (void -> 255)."
  CLASS_NAMES = CLASS_NAMES
  CLASS_COLOURS = CLASS_COLOURS

  def _split_generators(self, dl_manager):
    root = self.require_directory(dl_manager.manual_dir)
    generators = {}
    for split, (images, labels) in SPLIT_DIRECTORIES.items():
      if split in OPTIONAL_SPLITS and not os.path.isdir(os.path.join(root, images)):
        continue
      image_dir = self.require_subdirectory(root, images)
      label_dir = self.require_subdirectory(root, labels)
      generators[split] = self._generate_examples(image_dir, label_dir)
    return generators

  def _generate_examples(self, image_dir: str, label_dir: str):
    for image_id, image_path in self.images_in(image_dir).items():
      label_path = os.path.join(label_dir, image_id + ".png")
      if not os.path.isfile(label_path):
        raise base.BadExampleError(f"{image_path}: its label {label_path} is missing")
      image, label = base.read_pair(image_path, label_path, len(CLASS_NAMES), LABEL_MAP)
      yield image_id, base.labelled_example(image_id, image, label, len(CLASS_NAMES))

