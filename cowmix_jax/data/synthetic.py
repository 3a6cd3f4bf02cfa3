"""A procedurally generated segmentation dataset that needs no files, with two tasks.

Each image shows a grey-ish textured, unevenly lit background and several overlapping
objects in random saturated colours, so colour says nothing about the class.
- ``textures`` (configs/synthetic.py): randomly outlined blobs, plain or patterned
  (stripes, checks, dots); the class is local evidence, readable from a piece a period or two wide.
- ``shapes``: the class is the shape (disc, square, triangle, ring) or, for one class,
  the texture (stripes, on a disc or a square): global evidence, which a cow mask cuts.
Images are a pure function of (seed, split, index).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from cowmix_jax.data import base

CLASS_NAMES = ("background", "disc", "square", "triangle", "ring", "striped")
CLASS_COLOURS = ((0, 0, 0), (220, 60, 60), (60, 180, 75), (0, 130, 200), (245, 130, 48),
                 (145, 30, 180))
NUM_CLASSES = len(CLASS_NAMES)
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
  """``[size, size, channels]`` smooth random field: bilinear upsampling of a coarse grid."""
  coarse = rng.normal(size=(cells + 1, cells + 1, channels))
  coordinate = np.linspace(0, cells, size)
  base = np.floor(coordinate).astype(int).clip(0, cells - 1)
  frac = coordinate - base
  rows = coarse[base] * (1 - frac)[:, None, None] + coarse[base + 1] * frac[:, None, None]
  return (rows[:, base] * (1 - frac)[None, :, None] + rows[:, base + 1] * frac[None, :, None])


def _shape_region(kind: str, rows, cols, centre, radius, angle) -> np.ndarray:
  """Boolean ``[S, S]`` region of one shape."""
  dy, dx = rows - centre[0], cols - centre[1]
  u = np.cos(angle) * dx + np.sin(angle) * dy
  v = -np.sin(angle) * dx + np.cos(angle) * dy
  if kind == "disc":
    return u**2 + v**2 <= radius**2
  if kind == "ring":
    distance = np.sqrt(u**2 + v**2)
    return (distance <= radius) & (distance >= 0.55 * radius)
  if kind == "square":
    return (np.abs(u) <= 0.8 * radius) & (np.abs(v) <= 0.8 * radius)
  if kind == "triangle":  # equilateral, circumradius = radius
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
      theta = angle + 2 * np.pi * k / 3
      inside &= (np.cos(theta) * dx + np.sin(theta) * dy) <= 0.5 * radius
    return inside
  raise ValueError(kind)


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
  """A random saturated RGB colour in [0, 1]: any hue, so it carries no class."""
  colour = rng.uniform(0, 1, 3)
  colour = (colour - colour.min()) / max(np.ptp(colour), 1e-6)
  return rng.uniform(0.1, 0.3) + rng.uniform(0.5, 0.7) * colour


def render_example(seed: int, split: str, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """One image and its label map.

  Returns:
    ``(image [size, size, 3] uint8, label [size, size] uint8 class ids)``.
  """
  rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
  grey = rng.uniform(0.3, 0.7) + rng.uniform(-0.05, 0.05, 3)  # a low-saturation background
  image = grey + 0.1 * _smooth_field(rng, size, 4, 3)
  label = np.zeros((size, size), np.uint8)
  for _ in range(rng.integers(2, 6)):
    class_id = int(rng.integers(1, NUM_CLASSES))
    name = CLASS_NAMES[class_id]
    shape = rng.choice(["disc", "square"]) if name == "striped" else name
    centre = rng.uniform(0, size, 2)
    radius = rng.uniform(0.15, 0.3) * size
    angle = rng.uniform(0, 2 * np.pi)
    region = _shape_region(shape, rows, cols, centre, radius, angle)
    colour = _saturated_colour(rng)
    texture = np.broadcast_to(colour, (size, size, 3))
    if name == "striped":
      period = rng.uniform(3.0, 6.0)
      phase = np.cos(angle) * cols + np.sin(angle) * rows
      stripes = (np.floor(phase / period) % 2)[..., None]
      texture = stripes * colour + (1 - stripes) * _saturated_colour(rng)
    image = np.where(region[..., None], texture, image)
    label[region] = class_id
  illumination = 1.0 + 0.25 * _smooth_field(rng, size, 2, 1)
  image = image * illumination + rng.normal(0, 0.04, image.shape)
  return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), label


TEXTURE_CLASS_NAMES = ("background", "plain", "stripes", "checks", "dots")
TEXTURE_CLASS_COLOURS = ((0, 0, 0), (220, 60, 60), (60, 180, 75), (0, 130, 200),
                         (245, 130, 48))
TEXTURE_PERIODS = (5.0, 9.0)  # pixels: coarse enough to survive the encoder's stride-4 stem


def _blob(rng: np.random.Generator, rows, cols, size: int) -> np.ndarray:
  """Boolean ``[S, S]`` region of a random smooth blob (a wobbly ellipse): its outline
  says nothing about its class."""
  centre = rng.uniform(0.1 * size, 0.9 * size, 2)
  radii = rng.uniform(0.12, 0.28, 2) * size
  angle = rng.uniform(0, np.pi)
  dy, dx = rows - centre[0], cols - centre[1]
  u = (np.cos(angle) * dx + np.sin(angle) * dy) / radii[0]
  v = (-np.sin(angle) * dx + np.cos(angle) * dy) / radii[1]
  theta = np.arctan2(v, u)
  wobble = 1 + sum(rng.uniform(-0.12, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                   for k in (2, 3, 5))
  return u**2 + v**2 <= wobble**2


def _texture(rng: np.random.Generator, name: str, rows, cols) -> np.ndarray:
  """``[S, S]`` pattern in {0, 1} of one texture class (plain, stripes, checks, dots), at
  a random period in TEXTURE_PERIODS, orientation and phase."""
  if name == "plain":
    return np.ones_like(rows)
  angle = rng.uniform(0, np.pi)
  u = np.cos(angle) * cols + np.sin(angle) * rows
  v = -np.sin(angle) * cols + np.cos(angle) * rows
  period = rng.uniform(*TEXTURE_PERIODS)
  if name == "stripes":
    return (np.floor(u / period + rng.uniform()) % 2).astype(np.float32)
  if name == "checks":
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
  if name == "dots":
    cu = (u / period) % 1 - 0.5
    cv = (v / period) % 1 - 0.5
    return (cu**2 + cv**2 <= rng.uniform(0.04, 0.1)).astype(np.float32)
  raise ValueError(name)


def render_texture_example(seed: int, split: str, index: int, size: int
                           ) -> tuple[np.ndarray, np.ndarray]:
  """One image of the ``textures`` task and its label map: 2-4 randomly outlined blobs,
  each in one random saturated colour, plain or patterned (stripes, checks, dots: the
  class) in a dark and a light shade of it, at a random period, orientation and phase,
  on a smooth, unevenly lit background. Neither colour nor outline gives the class; the
  evidence is local: a piece of a blob a period or two wide shows it.

  Returns:
    ``(image [size, size, 3] uint8, label [size, size] uint8 class ids)``.
  """
  rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 2])
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
  grey = rng.uniform(0.3, 0.7) + rng.uniform(-0.05, 0.05, 3)
  image = grey + 0.1 * _smooth_field(rng, size, 4, 3)
  label = np.zeros((size, size), np.uint8)
  for _ in range(rng.integers(2, 5)):
    class_id = int(rng.integers(1, len(TEXTURE_CLASS_NAMES)))
    region = _blob(rng, rows, cols, size)
    pattern = _texture(rng, TEXTURE_CLASS_NAMES[class_id], rows, cols)[..., None]
    colour = _saturated_colour(rng)
    image = np.where(region[..., None], colour * (0.35 + 0.65 * pattern), image)
    label[region] = class_id
  illumination = 1.0 + 0.25 * _smooth_field(rng, size, 2, 1)
  image = image * illumination + rng.normal(0, 0.04, image.shape)
  return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), label


# config.data.task: the renderer and the class list of each synthetic task.
TASKS = {"shapes": (render_example, CLASS_NAMES, CLASS_COLOURS),
         "textures": (render_texture_example, TEXTURE_CLASS_NAMES, TEXTURE_CLASS_COLOURS)}


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  seed: int = 0
  image_size: int = 64
  num_train: int = 512
  num_validation: int = 128
  task: str = "shapes"


def config_for(seed: int, image_size: int, num_train: int, num_validation: int,
               task: str) -> SyntheticConfig:
  """A builder config named after its parameters (one prepared copy per setting)."""
  if image_size % 32:
    raise ValueError(f"config.data.image_size={image_size}: synthetic images must be a "
                     f"multiple of 32 pixels")
  if task not in TASKS:
    raise ValueError(f"config.data.task={task!r}: choose one of {sorted(TASKS)}")
  suffix = "" if task == "shapes" else f"_{task}"  # shapes keeps its earlier name
  return SyntheticConfig(
      name=f"seed{seed}_size{image_size}_train{num_train}_val{num_validation}{suffix}",
      seed=seed, image_size=image_size, num_train=num_train,
      num_validation=num_validation, task=task)


@base.DATASETS.register("synthetic")
class Synthetic(base.SegmentationBuilder):
  """The procedural dataset as a builder: no files needed (``manual_dir`` is unused)."""

  name = "cowmix_synthetic"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Shapes on textured backgrounds, 6 classes (and, as the "
                            "config task=textures, textured blobs, 5 classes).",
                   "1.1.0": "task=textures redrawn: plain, stripes, checks, dots in two "
                            "shades of one colour (the 1.0.0 textures were not learnt "
                            "in 1000 steps even with every label)."}
  DESCRIPTION = __doc__
  CLASS_NAMES = CLASS_NAMES
  CLASS_COLOURS = CLASS_COLOURS

  @classmethod
  def from_config(cls, data, data_dir, directory):
    """The images follow from ``config.data``'s seed, size, counts and task."""
    return cls(config=config_for(data.seed, data.image_size, data.num_train,
                                 data.num_validation, data.task),
               data_dir=data_dir)

  def class_names(self):
    return TASKS[self.builder_config.task][1]

  def class_colours(self):
    return TASKS[self.builder_config.task][2]

  def _split_generators(self, dl_manager):
    config = self.builder_config
    return {"train": self._generate_examples("train", config.num_train),
            "validation": self._generate_examples("validation", config.num_validation)}

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    render = TASKS[config.task][0]
    for index in range(num_examples):
      image, label = render(config.seed, split, index, config.image_size)
      image_id = f"{split}_{index:05d}"
      yield image_id, base.labelled_example(image_id, image, label, self.num_classes)
