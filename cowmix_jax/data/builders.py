"""Dataset names -> tfds builders, where their files are, and preparing them once."""

from __future__ import annotations

import os

import jax
import ml_collections
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

from cowmix_jax.data import base, camvid, cityscapes, folder, synthetic, voc

BUILDERS = {
    "camvid": camvid.CamVid,
    "cityscapes": cityscapes.Cityscapes,
    "pascal": voc.VocAug,
    "folder": folder.SegmentationFolder,
    "synthetic": synthetic.Synthetic,
}
# Where each dataset's files are when config.data.manual_dir is empty.
MANUAL_DIR_VARIABLES = {
    "camvid": "COWMIX_CAMVID_DIR",
    "cityscapes": "COWMIX_CITYSCAPES_DIR",
    "pascal": "COWMIX_VOC_DIR",
    "folder": "COWMIX_FOLDER_DIR",
}


def manual_dir(data: ml_collections.ConfigDict) -> str | None:
  """``config.data.manual_dir``, else the dataset's environment variable, else None."""
  directory = data.get("manual_dir") or os.environ.get(MANUAL_DIR_VARIABLES.get(data.name, ""))
  return os.path.expanduser(directory) if directory else None


def data_dir(data: ml_collections.ConfigDict) -> str | None:
  """Where prepared datasets go: ``config.data.data_dir``, else tfds's default
  (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
  directory = data.get("data_dir")
  return os.path.expanduser(directory) if directory else None


def _unknown_name(name: str) -> ValueError:
  return ValueError(f"config.data.name={name!r}: choose one of {sorted(BUILDERS)}")


def make_builder(data: ml_collections.ConfigDict) -> base.SegmentationBuilder:
  """The builder named by ``config.data.name`` (not prepared yet)."""
  if data.name not in BUILDERS:
    raise _unknown_name(data.name)
  kwargs = {"data_dir": data_dir(data)}
  if data.name == "synthetic":
    return synthetic.Synthetic(config=synthetic.config_for(
        data.seed, data.image_size, data.num_train, data.num_validation,
        data.get("task", "shapes")), **kwargs)
  directory = manual_dir(data)
  layout = BUILDERS[data.name].LAYOUT
  variable = MANUAL_DIR_VARIABLES[data.name]
  if not directory:
    raise base.DatasetLayoutError(
        f"{data.name}: no dataset directory. Set config.data.manual_dir or the environment "
        f"variable {variable}. Expected layout:\n{layout}")
  base.require_directory(directory, data.name, layout)
  if data.name == "folder":
    return folder.SegmentationFolder(directory=directory, **kwargs)
  if data.name == "cityscapes":
    kwargs["config"] = data.get("builder_config") or None
  return BUILDERS[data.name](**kwargs)


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
