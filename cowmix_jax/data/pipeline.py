"""tf.data input pipelines: augmented labelled and unlabelled training streams, padded
evaluation batches.

Every random draw of an example comes from a stateless seed ``(stream seed, position in
the stream)``, and shuffles are seeded, so the same config and seed give the same batches.
TensorFlow is hidden from GPUs: the accelerators belong to JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from cowmix_jax.conventions import IGNORE_LABEL, NORMALISATIONS

tf.config.set_visible_devices([], "GPU")

SHUFFLE_BUFFER = 1024


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """The training augmentation (``config.data.augment``).

  Attributes:
    crop_size: ``(height, width)`` of the crops; smaller images are padded (label 255,
      validity 0) before cropping.
    scale_range: random rescaling factor range; ``(1, 1)`` for none.
    scale_step: 0 for a continuous factor, else factors ``lo, lo + step, ..., hi``
      (Hung et al.: 0.5 to 1.5 in steps of 0.1).
    hflip: random horizontal flips.
    rotation_degrees: random rotation in ``[-d, d]`` about the centre; 0 for none.
    brightness_std: ``+ N(0, s)`` on [0, 1] intensities; 0 for none.
    contrast_log_std: contrast ``x exp(N(0, s))`` about the image mean; 0 for none.
  """

  crop_size: tuple[int, int]
  scale_range: tuple[float, float] = (1.0, 1.0)
  scale_step: float = 0.0
  hflip: bool = True
  rotation_degrees: float = 0.0
  brightness_std: float = 0.0
  contrast_log_std: float = 0.0

  @classmethod
  def from_config(cls, augment: ml_collections.ConfigDict) -> Augmentation:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(augment.keys()) - fields
    if unknown:
      raise ValueError(f"config.data.augment has unknown keys {sorted(unknown)}; known: "
                       f"{sorted(fields)}")
    values = dict(augment)
    values["crop_size"] = tuple(values["crop_size"])
    values["scale_range"] = tuple(values.get("scale_range", (1.0, 1.0)))
    if not 0 < values["scale_range"][0] <= values["scale_range"][1]:
      raise ValueError(f"config.data.augment.scale_range={values['scale_range']}: need "
                       f"0 < low <= high")
    return cls(**values)


def normalise(image: tf.Tensor, normalisation: str) -> tf.Tensor:
  """float32 ``[..., H, W, 3]`` in 0..255 (RGB) -> the model's input space."""
  if normalisation not in NORMALISATIONS:
    raise ValueError(f"config.model.normalisation={normalisation!r}: choose one of "
                     f"{sorted(NORMALISATIONS)}")
  spec = NORMALISATIONS[normalisation]
  if spec["bgr"]:
    image = image[..., ::-1]
  return (image - tf.constant(spec["mean"], tf.float32)) / tf.constant(spec["std"], tf.float32)


def _split_seeds(seed: tf.Tensor, count: int):
  return tf.unstack(tf.random.experimental.stateless_split(seed, count))


def _jitter_colour(image, aug: Augmentation, seed):
  """Brightness and contrast jitter of a 0..255 float image."""
  brightness_seed, contrast_seed = _split_seeds(seed, 2)
  if aug.brightness_std:
    image = image + 255.0 * aug.brightness_std * tf.random.stateless_normal([], brightness_seed)
  if aug.contrast_log_std:
    factor = tf.exp(aug.contrast_log_std * tf.random.stateless_normal([], contrast_seed))
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    image = (image - mean) * factor + mean
  return tf.clip_by_value(image, 0.0, 255.0)


def _scale_factor(aug: Augmentation, seed) -> tf.Tensor:
  low, high = aug.scale_range
  if aug.scale_step:
    count = int(math.floor((high - low) / aug.scale_step + 1e-6)) + 1
    index = tf.random.stateless_uniform([], seed, 0, count, dtype=tf.int32)
    return low + aug.scale_step * tf.cast(index, tf.float32)
  return tf.random.stateless_uniform([], seed, low, high)


def _rescale(image, label, valid, aug: Augmentation, seed):
  factor = _scale_factor(aug, seed)
  size = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) * factor), tf.int32)
  image = tf.image.resize(image, size, method="bilinear")
  label_valid = tf.image.resize(tf.stack([label, valid], -1), size, method="nearest")
  return image, label_valid[..., 0], label_valid[..., 1]


def _rotate(image, label, valid, degrees: float, seed):
  """Rotation about the image centre; outside pixels get label 255 and validity 0."""
  angle = tf.random.stateless_uniform([], seed, -degrees, degrees) * (math.pi / 180.0)
  shape = tf.shape(image)[:2]
  cy = (tf.cast(shape[0], tf.float32) - 1.0) / 2.0
  cx = (tf.cast(shape[1], tf.float32) - 1.0) / 2.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  # Output (x, y) samples input (cos (x-cx) - sin (y-cy) + cx, sin (x-cx) + cos (y-cy) + cy).
  transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                        sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])[None]

  def warp(x, interpolation):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform, output_shape=shape, fill_value=0.0,
        interpolation=interpolation, fill_mode="CONSTANT")[0]

  label_valid = warp(tf.stack([label, valid], -1), "NEAREST")
  valid = label_valid[..., 1]
  label = tf.where(valid > 0.5, label_valid[..., 0], float(IGNORE_LABEL))
  image = warp(image, "BILINEAR") * valid[..., None]  # outside: exactly the mean colour
  return image, label, valid


def check_downscale(factor: int, canvas: tuple[int, int]) -> int:
  """``config.data.downscale`` checked: a positive integer that divides the canvas."""
  if int(factor) != factor or factor < 1:
    raise ValueError(f"config.data.downscale={factor}: need a whole number >= 1")
  if any(size % int(factor) for size in canvas):
    raise ValueError(f"config.data.eval_canvas={tuple(canvas)} is not divisible by "
                     f"config.data.downscale={factor}")
  return int(factor)


def downscale(image: tf.Tensor, label: tf.Tensor | None, factor: int):
  """Shrinks ``image [H, W, 3]`` (antialiased bilinear, float32) and ``label [H, W]``
  (nearest, so ids stay ids) by ``factor`` to ``round(H / factor) x round(W / factor)``;
  a factor of 1 returns them as they are."""
  if factor == 1:
    return image, label
  size = tf.cast(tf.round(tf.cast(tf.shape(image)[:2], tf.float32) / factor), tf.int32)
  image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear",
                          antialias=True)
  if label is not None:
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
  return image, label


def pad_to(x: tf.Tensor, height, width, value: float) -> tf.Tensor:
  """Pads ``[H, W, ...]`` at the bottom and right to at least ``height x width``."""
  shape = tf.shape(x)
  paddings = [[0, tf.maximum(height - shape[0], 0)], [0, tf.maximum(width - shape[1], 0)]]
  paddings += [[0, 0]] * (len(x.shape) - 2)
  return tf.pad(x, paddings, constant_values=value)


def _pad_and_crop(image, label, valid, crop_size, seed):
  height, width = crop_size
  stacked = tf.concat([pad_to(image, height, width, 0.0),
                       pad_to(label[..., None], height, width, float(IGNORE_LABEL)),
                       pad_to(valid[..., None], height, width, 0.0)], axis=-1)
  crop = tf.image.stateless_random_crop(stacked, [height, width, 5], seed)
  return crop[..., :3], crop[..., 3], crop[..., 4]


def augment(image: tf.Tensor, label: tf.Tensor | None, seed: tf.Tensor,
            aug: Augmentation, normalisation: str) -> dict[str, tf.Tensor]:
  """One training example, augmented.

  Args:
    image: uint8 ``[H, W, 3]``.
    label: uint8 ``[H, W]`` (255 = ignore), or None for an unlabelled image.
    seed: int64 ``[2]`` stateless seed of this example.
    aug: the augmentation settings.
    normalisation: a key of ``NORMALISATIONS``.

  Returns:
    ``image`` float32 ``[h, w, 3]`` normalised (padding is 0, the mean colour),
    ``label`` int32 ``[h, w]`` (255 on padding) and ``valid`` float32 ``[h, w]``
    (1 on image pixels, 0 on padding), with ``(h, w) = aug.crop_size``.
  """
  colour_seed, scale_seed, rotation_seed, flip_seed, crop_seed = _split_seeds(seed, 5)
  image = tf.cast(image, tf.float32)
  valid = tf.ones(tf.shape(image)[:2], tf.float32)
  label = valid * 0.0 if label is None else tf.cast(label, tf.float32)
  if aug.brightness_std or aug.contrast_log_std:
    image = _jitter_colour(image, aug, colour_seed)
  if aug.scale_range != (1.0, 1.0):
    image, label, valid = _rescale(image, label, valid, aug, scale_seed)
  image = normalise(image, normalisation)
  if aug.rotation_degrees:
    image, label, valid = _rotate(image, label, valid, aug.rotation_degrees, rotation_seed)
  if aug.hflip:
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    image, label, valid = [tf.cond(flip, lambda x=x: tf.reverse(x, [1]), lambda x=x: x)
                           for x in (image, label, valid)]
  image, label, valid = _pad_and_crop(image, label, valid, aug.crop_size, crop_seed)
  return {"image": image, "label": tf.cast(tf.round(label), tf.int32), "valid": valid}


# ---------------------------------------------------------------------------------------
# Streams


def _decoders():
  return {"image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()}


def _read(builder, split: str, seed: int | None) -> tf.data.Dataset:
  """Examples with the image and label still encoded (cheap to filter and shuffle)."""
  shuffle = seed is not None
  read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
  return builder.as_dataset(split=split, decoders=_decoders(), shuffle_files=shuffle,
                            read_config=read_config)


def _decoded(builder, example, with_label: bool):
  features = builder.info.features
  image = features["image"].decode_example(example["image"])
  label = features["label"].decode_example(example["label"]) if with_label else None
  return image, label


def _process_split(splits: Sequence[str], process_index: int, process_count: int):
  """This process's share of the examples of ``splits`` (all of it with one process)."""
  if process_count == 1:
    return "+".join(splits)
  shares = [tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
            for split in splits]
  return functools.reduce(operator.add, shares)


def _endless_augmented_batches(dataset: tf.data.Dataset, buffer: int, seed: int,
                               prepare, global_batch: int, start_batch: int,
                               process_index: int, process_count: int) -> tf.data.Dataset:
  """Shuffles each epoch, repeats, and maps ``prepare(example_seed, example)`` where
  ``example_seed = (seed, position in the stream)``; full batches only.

  Every process walks the same global stream (same order, same seeds) and decodes and
  augments only its rows of each global batch, so the global batch does not depend on
  the number of processes. ``start_batch`` positions the stream for a resumed run.
  Skipped examples and other processes' rows are read and shuffled (cheap: still
  encoded) but never decoded or augmented.
  """
  if global_batch % process_count:
    raise ValueError(f"batch size {global_batch} is not divisible by the {process_count} "
                     f"processes")
  local_batch = global_batch // process_count
  dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat().enumerate().skip(start_batch * global_batch)
  if process_count > 1:
    dataset = dataset.filter(
        lambda index, example: (index % global_batch) // local_batch == process_index)
  dataset = dataset.map(
      lambda index, example: prepare(tf.stack([tf.constant(seed, tf.int64), index]), example),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.batch(local_batch, drop_remainder=True)


def labelled_stream(builder, split: str, image_ids: Sequence[str], global_batch: int,
                    seed: int, aug: Augmentation, normalisation: str,
                    process_index: int = 0, process_count: int = 1,
                    start_batch: int = 0, downscale_factor: int = 1) -> tf.data.Dataset:
  """Endless augmented batches ``{image [B, h, w, 3], label [B, h, w]}`` of the images
  ``image_ids`` of ``split``: this process's ``B = global_batch / process_count`` rows
  of each global batch, from global batch ``start_batch``. Images are shrunk by
  ``downscale_factor`` before augmentation."""
  ids = tf.constant(list(image_ids))
  dataset = _read(builder, split, seed=None).filter(
      lambda example: tf.reduce_any(tf.equal(example["image_id"], ids))).cache()

  def prepare(example_seed, example):
    image, label = downscale(*_decoded(builder, example, with_label=True), downscale_factor)
    out = augment(image, label, example_seed, aug, normalisation)
    return {"image": out["image"], "label": out["label"]}

  buffer = min(SHUFFLE_BUFFER, max(len(image_ids), 1))
  return _endless_augmented_batches(dataset, buffer, seed, prepare, global_batch, start_batch,
                                    process_index, process_count)


def unlabelled_stream(builder, splits: Sequence[str], global_batch: int, seed: int,
                      aug: Augmentation, normalisation: str, process_index: int = 0,
                      process_count: int = 1, start_batch: int = 0,
                      downscale_factor: int = 1) -> tf.data.Dataset:
  """Endless augmented batches ``{unlabelled_image [B, h, w, 3], unlabelled_valid
  [B, h, w]}`` of every image of ``splits`` (their labels are never read): this
  process's rows of each global batch, from global batch ``start_batch``, shrunk by
  ``downscale_factor`` before augmentation."""
  dataset = _read(builder, "+".join(splits), seed=seed)

  def prepare(example_seed, example):
    image, _ = downscale(*_decoded(builder, example, with_label=False), downscale_factor)
    out = augment(image, None, example_seed, aug, normalisation)
    return {"unlabelled_image": out["image"], "unlabelled_valid": out["valid"]}

  return _endless_augmented_batches(dataset, SHUFFLE_BUFFER, seed, prepare, global_batch,
                                    start_batch, process_index, process_count)


def train_batches(labelled: tf.data.Dataset, unlabelled: tf.data.Dataset | None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """numpy batches of both streams together (``image``, ``label``, ``unlabelled_*``)."""
  if unlabelled is None:
    dataset = labelled
  else:
    dataset = tf.data.Dataset.zip(labelled, unlabelled).map(lambda a, b: {**a, **b})
  return iter(tfds.as_numpy(dataset.prefetch(tf.data.AUTOTUNE)))


def eval_batches(builder, split: str, canvas: tuple[int, int], batch_size: int,
                 normalisation: str, process_index: int = 0, process_count: int = 1,
                 downscale_factor: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Whole images padded to ``canvas`` (label 255), in order, as full batches.

  Yields ``{"image": [B, H / f, W / f, 3] float32, "label": [B, H, W] int32,
  "image_id": [B] bytes, "size": [B, 2] int32 (the unpadded label height and width)}``
  with ``(H, W) = canvas`` and ``f = downscale_factor``: labels keep their full
  resolution (the evaluation upsamples the logits to them), images are shrunk by ``f``
  and padded to ``canvas / f``. The last batches are padded with ignored pixels (id
  ``b""``, size 0), and every process yields the same number of batches.
  """
  height, width = canvas
  factor = check_downscale(downscale_factor, canvas)

  def prepare(example):
    image, label = _decoded(builder, example, with_label=True)
    shape = tf.shape(label)
    tf.debugging.assert_less_equal(
        shape, tf.constant([height, width]),
        message=f"an image is larger than config.data.eval_canvas={tuple(canvas)}")
    image, _ = downscale(image, None, factor)
    image = normalise(tf.cast(image, tf.float32), normalisation)
    return {"image": pad_to(image, height // factor, width // factor, 0.0),
            "label": pad_to(tf.cast(label, tf.int32), height, width, IGNORE_LABEL),
            "image_id": example["image_id"], "size": tf.cast(shape, tf.int32)}

  num_examples = builder.info.splits[split].num_examples
  num_batches = math.ceil(math.ceil(num_examples / process_count) / batch_size)
  dataset = _read(builder, _process_split([split], process_index, process_count),
                  seed=None)
  dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  yielded = 0
  for batch in tfds.as_numpy(dataset.batch(batch_size).prefetch(2)):
    yielded += 1
    yield _pad_batch(batch, batch_size)
  empty = {"image": np.zeros((0, height // factor, width // factor, 3), np.float32),
           "label": np.zeros((0, height, width), np.int32),
           "image_id": np.zeros((0,), object), "size": np.zeros((0, 2), np.int32)}
  for _ in range(num_batches - yielded):
    yield _pad_batch(empty, batch_size)


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Fills a short batch up to ``batch_size`` with ignored, empty images."""
  missing = batch_size - len(batch["image"])
  if not missing:
    return batch
  fill = {"image": 0.0, "label": IGNORE_LABEL, "image_id": b"", "size": 0}
  return {key: np.concatenate([value, np.full((missing,) + value.shape[1:], fill[key],
                                              value.dtype)])
          for key, value in batch.items()}
