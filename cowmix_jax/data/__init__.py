"""Datasets (tfds builders reading local copies) and the inputs of a training run.

``make_inputs(config)`` prepares the dataset of ``config.data`` (once; later runs reuse
it), chooses the labelled subset, and returns the training and evaluation streams.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Iterator, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from cowmix_jax import config_base, mixing, models
from cowmix_jax.data import builders, pipeline
from cowmix_jax.data.base import BadExampleError, DatasetLayoutError  # noqa: F401

UNLABELLED_SPLITS = ("train", "unlabelled")


@dataclasses.dataclass
class Inputs:
  """What a training run reads: class names, the labelled ids and the streams."""

  builder: object
  class_names: Sequence[str]
  labelled_ids: list[str]
  unlabelled_splits: list[str]
  train: Iterator[dict]
  normalisation: str
  eval_canvas: tuple[int, int]
  process_index: int = 0
  process_count: int = 1
  downscale: int = 1

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def num_examples(self, split: str) -> int:
    return self.builder.info.splits[split].num_examples

  def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
    """Padded evaluation batches of ``split``, ``batch_size`` images per process."""
    if split not in self.builder.info.splits:
      raise ValueError(f"split {split!r} is not in the dataset (it has "
                       f"{sorted(self.builder.info.splits)})")
    return pipeline.eval_batches(self.builder, split, self.eval_canvas, batch_size,
                                 self.normalisation, self.process_index, self.process_count,
                                 self.downscale)


# Training crops that "auto" makes from the largest training image are capped at this
# many (shrunk) pixels a side.
AUTO_CROP_LIMIT = 512
# "auto" cow-mask sigmas: the paper's CamVid range, 4..16 pixels for 360-pixel-high
# images, relative to the crop's shorter side.
PAPER_SIGMA_RELATIVE = (4.0 / 360, 16.0 / 360)


def pair_setting(value, key: str, what: str, kind=int) -> tuple | None:
  """A setting of two positive numbers (``config.KEY``), or None for ``auto``.
  Accepts a tuple, ``"auto"`` / ``("auto",)`` and the strings ``"a,b"`` / ``"(a, b)"``
  (what the command line makes of a tuple given to the string field of ``auto``)."""
  if config_base.is_auto(value):
    return None
  if isinstance(value, str):
    try:
      value = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      value = None
  types = (int,) if kind is int else (int, float)
  if (isinstance(value, (tuple, list)) and len(value) == 2 and
      all(isinstance(v, types) and not isinstance(v, bool) and v > 0 for v in value)):
    return tuple(kind(v) for v in value)
  raise ValueError(f"config.{key}={value!r}: expected {what} or '{config_base.AUTO}'")


def canvas_setting(value) -> tuple[int, int] | None:
  """``config.data.eval_canvas`` as ``(H, W)``, or None for ``auto``."""
  return pair_setting(value, "data.eval_canvas",
                      "(H, W) in pixels (auto: the largest evaluation image)")


def largest_image(builder, split: str) -> tuple[tuple[int, int], str]:
  """The largest height and width over the labelled images of ``split`` (from the
  labels; images stay encoded) and the id of an image with the largest area."""
  dataset = builder.as_dataset(split=split, shuffle_files=False,
                               decoders={"image": tfds.decode.SkipDecoding()})
  dataset = dataset.map(lambda ex: (ex["image_id"], tf.shape(ex["label"])),
                        num_parallel_calls=tf.data.AUTOTUNE)
  height = width = largest_area = 0
  largest_id = ""
  for image_id, (h, w) in tfds.as_numpy(dataset):
    height, width = max(height, int(h)), max(width, int(w))
    if h * w > largest_area:
      largest_area, largest_id = int(h * w), image_id.decode()
  return (height, width), largest_id


def resolve_eval_canvas(data: ml_collections.ConfigDict, builder, split: str
                        ) -> tuple[int, int]:
  """Sets ``data.eval_canvas`` to ``(H, W)``: for ``auto`` the largest image of
  ``split`` rounded up to a multiple of ``data.downscale``; a given canvas is checked
  to hold every image of ``split`` (a smaller one would stop the run at its first
  evaluation). Returns it."""
  factor = int(data.downscale)
  (height, width), largest_id = largest_image(builder, split)
  canvas = canvas_setting(data.eval_canvas)
  if canvas is None:
    canvas = (math.ceil(height / factor) * factor, math.ceil(width / factor) * factor)
    logging.info("config.data.eval_canvas=auto: %s, the largest %s image (%dx%d) "
                 "rounded up to a multiple of config.data.downscale=%d.", canvas, split,
                 height, width, factor)
  elif canvas[0] < height or canvas[1] < width:
    fits = (max(canvas[0], math.ceil(height / factor) * factor),
            max(canvas[1], math.ceil(width / factor) * factor))
    raise ValueError(
        f"config.data.eval_canvas={canvas} (H, W) cannot hold every {split} image: the "
        f"largest are {height} high and {width} wide (e.g. {largest_id!r}). Set "
        f"--config.data.eval_canvas=auto or --config.data.eval_canvas='{fits}'.")
  pipeline.check_downscale(factor, canvas)
  config_base.replace_field(data, "eval_canvas", tuple(canvas))
  return tuple(canvas)


def resolve_crop_and_sigma(config: ml_collections.ConfigDict, builder) -> None:
  """``auto`` training crops and cow-mask sigmas, from the images: the crop is the
  largest labelled training image after ``data.downscale`` (whole images, as the paper
  trains CamVid), at most AUTO_CROP_LIMIT a side; the sigmas are the paper's CamVid
  range relative to the crop's shorter side."""
  augment = config.data.augment
  crop = pair_setting(augment.crop_size, "data.augment.crop_size", "(H, W)")
  if crop is None:
    factor = int(config.data.downscale)
    (height, width), _ = largest_image(builder, config.data.train_split)
    crop = tuple(min(AUTO_CROP_LIMIT, math.ceil(size / factor)) for size in (height, width))
    logging.info("config.data.augment.crop_size=auto: %s (the largest %s image, %dx%d, "
                 "shrunk %d times, at most %d a side).", crop, config.data.train_split,
                 height, width, factor, AUTO_CROP_LIMIT)
  # A given value is written back as well: the command line makes a string of a tuple
  # given to a field whose default is "auto".
  config_base.replace_field(augment, "crop_size", crop)
  sigmas = pair_setting(config.mask.cow_sigma_range, "mask.cow_sigma_range",
                        "(smallest, largest) sigma in pixels", float)
  if sigmas is None:
    side = min(crop)
    sigmas = tuple(round(r * side, 2) for r in PAPER_SIGMA_RELATIVE)
    logging.info("config.mask.cow_sigma_range=auto: %s (the paper's 4..16 for 360 "
                 "pixels, scaled to the crop's %d).", sigmas, side)
  config_base.replace_field(config.mask, "cow_sigma_range", sigmas)


# "auto" downscale on a CPU: the largest training image is shrunk by a whole factor to
# at most this many pixels on its longer side (a 512x512 image to 128x128), so that
# configs/folder.py's default run takes about half an hour on 2 cores.
CPU_AUTO_SIDE = 160


def resolve_downscale(data: ml_collections.ConfigDict, builder, backend: str) -> int:
  """Sets ``data.downscale`` for ``auto``: 1 (whole images) on accelerators; on a CPU
  the smallest whole factor that brings the largest training image to CPU_AUTO_SIDE
  pixels a side. Logs the choice and how to override it. Returns the factor."""
  if not config_base.is_auto(data.downscale):
    return data.downscale
  factor = 1
  if backend == "cpu":
    (height, width), _ = largest_image(builder, data.train_split)
    factor = max(1, math.ceil(max(height, width) / CPU_AUTO_SIDE))
    logging.info("config.data.downscale=auto: %d on the CPU (the largest %s image, %dx%d, "
                 "trains at %dx%d: at most %d pixels a side on a CPU); "
                 "--config.data.downscale=1 keeps whole images.", factor, data.train_split,
                 height, width, math.ceil(height / factor), math.ceil(width / factor),
                 CPU_AUTO_SIDE)
  config_base.replace_field(data, "downscale", factor)
  return factor


def resolve_data_settings(config: ml_collections.ConfigDict, builder) -> None:
  """Every setting that may be ``auto`` or must fit the data, resolved and checked:
  the downscale factor, the evaluation canvas, the training crop, the cow-mask sigmas."""
  resolve_downscale(config.data, builder, jax.default_backend())
  resolve_eval_canvas(config.data, builder, config.data.eval_split)
  resolve_crop_and_sigma(config, builder)


def stream_seed(seed: int, stream: int) -> int:
  """A TensorFlow seed for one input stream, from the run's seed (the same in every
  process: each takes its rows of the same global stream)."""
  return int(np.random.default_rng([seed, stream]).integers(2**31 - 1))


def choose_labelled_ids(builder, data: ml_collections.ConfigDict, seed: int
                        ) -> tuple[list[str], np.ndarray, list[str]]:
  """The labelled ids (from ``labelled_ids_file`` or drawn by seed), their label
  histograms ``[N, C + 1]`` and all ids of the training split."""
  from cowmix_jax.data import splits  # here: `python -m cowmix_jax.data.splits` runs it
  ids, histograms = splits.read_ids_and_histograms(builder, data.train_split)
  if data.labelled_ids_file:
    chosen = splits.read_id_file(data.labelled_ids_file)
    splits.check_ids_exist(chosen, ids, data.labelled_ids_file)
  else:
    subset_seed = data.subset_seed if data.subset_seed >= 0 else seed
    chosen = splits.choose_labelled(ids, data.num_labelled, subset_seed, histograms,
                                    data.class_balanced)
  index = {image_id: i for i, image_id in enumerate(ids)}
  return chosen, histograms[[index[i] for i in chosen]], ids


def make_inputs(config: ml_collections.ConfigDict, workdir: str | None = None,
                process_index: int = 0, process_count: int = 1, start_step: int = 0
                ) -> Inputs:
  """Prepares ``config.data``, chooses the labelled subset and builds the streams.

  Logs the subset's size and per-class pixel histogram, and writes its ids into
  ``workdir/labelled_ids.json`` so the run can be repeated with the same split.
  The streams give this process's rows (``config.batch_size / process_count`` labelled,
  ``config.unlabelled_batch_size / process_count`` unlabelled) of global batches that do
  not depend on the number of processes, starting
  with the batch of step ``start_step + 1`` (a resumed run sees what an uninterrupted
  run would have seen).
  """
  from cowmix_jax.data import splits  # here: `python -m cowmix_jax.data.splits` runs it

  data = config.data
  builder = builders.prepare(data)
  class_names = list(builder.info.metadata["class_names"])
  labelled_ids, histograms, all_ids = choose_labelled_ids(builder, data, config.seed)
  logging.info("%d labelled images of %d in %s/%s:\n%s", len(labelled_ids), len(all_ids),
               data.name, data.train_split, splits.histogram_table(histograms, class_names))
  if workdir is not None and process_index == 0:
    splits.write_id_file(epath.Path(workdir) / "labelled_ids.json", labelled_ids,
                         dataset=data.name, split=data.train_split,
                         num_available=len(all_ids))
  if any(config_base.is_auto(v) for v in (data.eval_canvas, data.augment.crop_size,
                                           config.mask.cow_sigma_range)):
    resolve_data_settings(config, builder)  # train.check_against_data did it for runs
  aug = pipeline.Augmentation.from_config(data.augment)
  normalisation = models.input_normalisation(config.model)
  factor = pipeline.check_downscale(data.downscale, data.eval_canvas)
  labelled = pipeline.labelled_stream(
      builder, data.train_split, labelled_ids, config.batch_size, stream_seed(config.seed, 2),
      aug, normalisation, process_index, process_count, start_step, factor)
  unlabelled_splits = [s for s in UNLABELLED_SPLITS if s in builder.info.splits]
  unlabelled = None
  if mixing.make_perturbation(config).uses_unlabelled:
    unlabelled = pipeline.unlabelled_stream(
        builder, unlabelled_splits, config.unlabelled_batch_size, stream_seed(config.seed, 3),
        aug, normalisation, process_index, process_count, start_step, factor)
  return Inputs(builder, class_names, labelled_ids, unlabelled_splits,
                pipeline.train_batches(labelled, unlabelled), normalisation,
                tuple(data.eval_canvas), process_index, process_count, factor)
