"""Datasets as in-memory arrays and seeded host-side batch iterators.

This is the minimal data layer of the core issue (the synthetic dataset only); the
tensorflow-datasets builders and tf.data pipelines replace it for real datasets.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterator, Sequence, Tuple

import ml_collections
import numpy as np

from cowmix_jax.data import synthetic
from cowmix_jax.losses import IGNORE_LABEL

# Synthetic images are in [0, 1]; normalised so that 0 is the mean grey.
SYNTHETIC_MEAN, SYNTHETIC_STD = 0.5, 0.25


@dataclasses.dataclass
class Datasets:
  """Arrays of one run: images uint8 ``[N, H, W, 3]``, labels uint8 ``[N, H, W]``."""

  labelled_images: np.ndarray
  labelled_labels: np.ndarray
  labelled_ids: np.ndarray
  unlabelled_images: np.ndarray
  validation_images: np.ndarray
  validation_labels: np.ndarray
  class_names: Sequence[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def choose_labelled(num_available: int, num_labelled: int, seed: int) -> np.ndarray:
  """Indices of a seeded random subset of ``num_labelled`` images (all if -1)."""
  if num_labelled == -1:
    return np.arange(num_available)
  if not 0 < num_labelled <= num_available:
    raise ValueError(
        f"config.data.num_labelled={num_labelled}: must be -1 (all) or between 1 and "
        f"the {num_available} training images available")
  return np.sort(np.random.default_rng([seed, 1]).permutation(num_available)[:num_labelled])


def load_datasets(config: ml_collections.ConfigDict) -> Datasets:
  """Loads the dataset named by ``config.data.name`` and chooses the labelled subset."""
  data = config.data
  if data.name != "synthetic":
    raise ValueError(f"config.data.name={data.name!r}: only 'synthetic' exists so far")
  train_images, train_labels = synthetic.load_split(data.seed, "train", data.num_train,
                                                    data.image_size)
  val_images, val_labels = synthetic.load_split(data.seed, "validation", data.num_validation,
                                                data.image_size)
  labelled = choose_labelled(len(train_images), data.num_labelled, config.seed)
  return Datasets(train_images[labelled], train_labels[labelled], labelled, train_images,
                  val_images, val_labels, synthetic.CLASS_NAMES)


def normalise(images: np.ndarray) -> np.ndarray:
  """uint8 ``[..., 3]`` -> float32 with zero mean colour (grey) and unit-ish scale."""
  return ((images.astype(np.float32) / 255.0) - SYNTHETIC_MEAN) / SYNTHETIC_STD


def random_batches(arrays: Tuple[np.ndarray, ...], batch_size: int, seed,
                   flip: bool = True) -> Iterator[Tuple[np.ndarray, ...]]:
  """Endless seeded batches: reshuffled each epoch, random horizontal flips.

  All arrays share the leading axis and are flipped together along axis 2 (width).
  """
  rng = np.random.default_rng(seed)
  num = len(arrays[0])
  order = np.empty(0, np.int64)
  while True:
    while len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(num)])
    index, order = order[:batch_size], order[batch_size:]
    batch = [a[index] for a in arrays]
    if flip:
      flips = rng.random(batch_size) < 0.5
      batch = [np.where(flips.reshape((-1,) + (1,) * (a.ndim - 1)), a[:, :, ::-1], a)
               for a in batch]
    yield tuple(batch)


def train_batches(datasets: Datasets, config: ml_collections.ConfigDict
                  ) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches: ``image``, ``label`` and ``unlabelled_image``."""
  labelled = random_batches((datasets.labelled_images, datasets.labelled_labels),
                            config.batch_size, seed=[config.seed, 2])
  unlabelled = random_batches((datasets.unlabelled_images,), config.unlabelled_batch_size,
                              seed=[config.seed, 3])
  for (images, labels), (unlabelled_images,) in zip(labelled, unlabelled):
    yield {"image": normalise(images), "label": labels.astype(np.int32),
           "unlabelled_image": normalise(unlabelled_images)}


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int
                 ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """Batches in order; the last is padded with ignored pixels to the full batch size."""
  for start in range(0, len(images), batch_size):
    image_batch = normalise(images[start:start + batch_size])
    label_batch = labels[start:start + batch_size].astype(np.int32)
    missing = batch_size - len(image_batch)
    if missing:
      image_batch = np.concatenate([image_batch, np.zeros((missing,) + image_batch.shape[1:],
                                                          np.float32)])
      label_batch = np.concatenate([label_batch, np.full((missing,) + label_batch.shape[1:],
                                                         IGNORE_LABEL, np.int32)])
    yield image_batch, label_batch
