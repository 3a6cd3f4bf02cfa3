"""Dataset names -> tfds builders, where their files are, and preparing them once."""

from __future__ import annotations

import os

import jax
import ml_collections
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

# Importing the builder modules registers them in base.DATASETS.
from cowmix_jax.data import base, camvid, cityscapes, folder, synthetic, voc  # noqa: F401


def manual_dir(data: ml_collections.ConfigDict) -> str | None:
  """``config.data.manual_dir``, else the dataset's environment variable, else None."""
  variable = base.DATASETS.get(data.name).MANUAL_DIR_VARIABLE
  directory = data.get("manual_dir") or (os.environ.get(variable) if variable else None)
  return os.path.expanduser(directory) if directory else None


def data_dir(data: ml_collections.ConfigDict) -> str | None:
  """Where prepared datasets go: ``config.data.data_dir``, else tfds's default
  (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
  directory = data.data_dir
  return os.path.expanduser(directory) if directory else None


def make_builder(data: ml_collections.ConfigDict) -> base.SegmentationBuilder:
  """The builder named by ``config.data.name`` (not prepared yet); its files must be
  where ``config.data.manual_dir`` or the dataset's environment variable says."""
  builder_class = base.DATASETS.get(data.name)
  directory = None
  if builder_class.MANUAL_DIR_VARIABLE is not None:
    directory = manual_dir(data)
    if not directory:
      raise base.DatasetLayoutError(
          f"{data.name}: no dataset directory. Set config.data.manual_dir or the "
          f"environment variable {builder_class.MANUAL_DIR_VARIABLE}. Expected layout:\n"
          f"{builder_class.LAYOUT}")
    base.require_directory(directory, data.name, builder_class.LAYOUT)
  return builder_class.from_config(data, data_dir(data), directory)


def prepare(data: ml_collections.ConfigDict) -> base.SegmentationBuilder:
  """The builder of ``config.data``, prepared (built once, reused afterwards).

  With several processes, process 0 prepares and the others wait for it (``data_dir``
  must then be shared by all hosts).
  """
  builder = make_builder(data)
  if jax.process_count() > 1:
    if jax.process_index() == 0:
      _prepare(builder, data)
    multihost_utils.sync_global_devices("cowmix_jax dataset prepared")
    return make_builder(data)  # re-read what process 0 wrote
  _prepare(builder, data)
  return builder


def _prepare(builder, data: ml_collections.ConfigDict) -> None:
  if not builder.is_prepared():
    logging.info("Preparing %s (%s) into %s; later runs reuse it.", data.name,
                 builder.builder_config.name if builder.builder_config else "default",
                 builder.data_dir)
    download_config = tfds.download.DownloadConfig(
        manual_dir=manual_dir(data), compute_stats=tfds.download.ComputeStatsMode.SKIP)
    builder.download_and_prepare(download_config=download_config)
  counts = ", ".join(f"{split} {info.num_examples}" for split, info in
                     sorted(builder.info.splits.items()))
  source = manual_dir(data) if builder.MANUAL_DIR_VARIABLE is not None else "generated"
  logging.info("Dataset %s from %s, prepared copy %s: %s images.", data.name, source,
               builder.data_dir, counts)
