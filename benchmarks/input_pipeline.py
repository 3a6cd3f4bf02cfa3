"""Does the input keep the train step busy? The paper's CamVid and Pascal configs.

For each config, in one process:
  1. the tf.data training input alone (labelled + unlabelled streams), images per second;
  2. the jitted CowMix train step fed one fixed device batch ("fixed");
  3. the train step fed by the input, each batch transferred when it is needed
     (``config.prefetch_batches=0``), and with batches transferred ahead (the default,
     ``sharding.prefetch_to_mesh``).
The three step timings alternate (``--repeats`` times, median kept), so the machine's
noise hits them alike. fed / fixed is the share of the step's speed the input leaves
(1.0: input is free).

CamVid is read from ``--camvid_manual_dir`` (the real data; default $COWMIX_CAMVID_DIR).
Pascal is read from ``--voc_manual_dir``;
without it, from a stand-in VOC tree of ``--voc_images`` smooth random 500x375 JPEGs
(VOC's typical size, so decoding costs about what VOC's does) written to a temporary
directory.

python -m benchmarks.input_pipeline [--configs=camvid,pascal] [--depth=50] [--steps=3]
    [--repeats=3] [--camvid_manual_dir=DIR] [--voc_manual_dir=DIR] [--output=F.json]
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from PIL import Image

from benchmarks import machine
from cowmix_jax import cli, config_base, models, optimizers, sharding, steps
from cowmix_jax.data import make_inputs
from cowmix_jax.state import create_train_state

CONFIG_FILES = {"camvid": "configs/camvid.py", "pascal": "configs/pascal.py"}
VOC_IMAGE_SIZE = (375, 500)  # (H, W)


def write_standin_voc(root: str, count: int, seed: int = 0) -> str:
  """A VOC2012 tree of ``count`` training and ``count // 4`` validation images: smooth
  random colour fields of VOC's size with blocky labels of 21 classes. Returns ``root``."""
  rng = np.random.default_rng(seed)
  height, width = VOC_IMAGE_SIZE
  folders = {name: os.path.join(root, name) for name in
             ("JPEGImages", "SegmentationClassAug", "ImageSets/SegmentationAug",
              "ImageSets/Segmentation")}
  for folder in folders.values():
    os.makedirs(folder, exist_ok=True)
  ids = [f"2008_{i:06d}" for i in range(count + count // 4)]
  for image_id in ids:
    coarse = rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    image.save(os.path.join(folders["JPEGImages"], f"{image_id}.jpg"), quality=90)
    blocks = rng.integers(0, 21, (height // 75 + 1, width // 100 + 1), dtype=np.uint8)
    label = np.kron(blocks, np.ones((75, 100), np.uint8))[:height, :width]
    Image.fromarray(label).save(os.path.join(folders["SegmentationClassAug"],
                                             f"{image_id}.png"))
  with open(os.path.join(folders["ImageSets/SegmentationAug"], "train_aug.txt"), "w") as f:
    f.writelines(f"{image_id}\n" for image_id in ids[:count])
  with open(os.path.join(folders["ImageSets/Segmentation"], "val.txt"), "w") as f:
    f.writelines(f"{image_id}\n" for image_id in ids[count:])
  return root


def benchmark_config(name: str, manual_dir: str, data_dir: str, depth: int,
                     available: int | None = None):
  """The config of ``name`` on ``manual_dir`` with a U-Net of ``depth`` (random init),
  its labelled subset cut to the ``available`` training images of a stand-in tree."""
  config = config_base.load_config_file(CONFIG_FILES[name])
  config.data.manual_dir = manual_dir
  config.data.data_dir = data_dir
  config.model.depth = depth
  config.model.pretrained = ""
  if available is not None:
    config.data.num_labelled = min(config.data.num_labelled, available)
  return config


def _images_per_batch(config) -> int:
  return config.batch_size + config.unlabelled_batch_size


def input_rate(config, num_batches: int) -> float:
  """Images per second of the training input alone."""
  inputs = make_inputs(config)
  for _ in range(3):  # warm up: file reads, tf.function tracing, the labelled cache
    next(inputs.train)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(inputs.train)
  return num_batches * _images_per_batch(config) / (time.perf_counter() - start)


def step_rates(config, num_steps: int, repeats: int) -> dict[str, float]:
  """Images per second of the train step: ``fixed`` batch, ``fed`` without prefetching,
  ``fed_prefetch`` with ``config.prefetch_batches`` batches ahead; alternating, medians.
  Also ``<feed>_page_faults``: the median minor page faults per step (the allocator's
  share of the noise between repetitions)."""
  inputs = make_inputs(config)
  mesh = sharding.make_mesh(1)
  model = models.build_model(config.model, inputs.num_classes)
  tx = optimizers.make_optimizer(config)
  state = create_train_state(model, tx, jax.random.PRNGKey(0),
                             (1,) + tuple(config.data.augment.crop_size) + (3,))
  state = jax.device_put(state, sharding.replicated(mesh))
  train_step = steps.make_train_step(model, tx, config, mesh)
  fixed = sharding.shard_batch(next(inputs.train), mesh)
  state, metrics = train_step(state, fixed)  # compile
  jax.block_until_ready(metrics)
  prefetched = sharding.prefetch_to_mesh(inputs.train, mesh, config.prefetch_batches)
  feeds = {
      "fixed": lambda: fixed,
      "fed": lambda: sharding.shard_batch(next(inputs.train), mesh),
      "fed_prefetch": lambda: next(prefetched)[1],
  }
  seconds = {name: [] for name in feeds}
  faults = {name: [] for name in feeds}
  for _ in range(repeats):
    for name, feed in feeds.items():
      _, faults_before = machine.kernel_counters()
      start = time.perf_counter()
      for _ in range(num_steps):
        state, metrics = train_step(state, feed())
      jax.block_until_ready(metrics)
      seconds[name].append(time.perf_counter() - start)
      faults[name].append((machine.kernel_counters()[1] - faults_before) / num_steps)
  rates = {name: num_steps * _images_per_batch(config) / float(np.median(values))
           for name, values in seconds.items()}
  rates.update({f"{name}_page_faults": float(np.median(values))
                for name, values in faults.items()})
  return rates


FLAGS = cli.new_flags()
flags.DEFINE_list("configs", list(CONFIG_FILES), f"of {sorted(CONFIG_FILES)}",
                  flag_values=FLAGS)
flags.DEFINE_string("camvid_manual_dir", os.environ.get("COWMIX_CAMVID_DIR", ""),
                    "CamVid's directory (needed for --configs=camvid)", flag_values=FLAGS)
flags.DEFINE_string("voc_manual_dir", "", "VOC2012 with SBD labels ('' = a stand-in tree)",
                    flag_values=FLAGS)
flags.DEFINE_integer("voc_images", 128, "training images of the stand-in VOC tree",
                     flag_values=FLAGS)
flags.DEFINE_string("data_dir", "", "where prepared datasets go ('' = a temporary directory)",
                    flag_values=FLAGS)
flags.DEFINE_integer("depth", 50, "ResNet depth of the U-Net (50: the paper's)",
                     flag_values=FLAGS)
flags.DEFINE_integer("steps", 3, "train steps per timed repetition", flag_values=FLAGS)
flags.DEFINE_integer("repeats", 3, "alternating repetitions", flag_values=FLAGS)
flags.DEFINE_integer("batches", 30, "input batches to time", flag_values=FLAGS)
flags.DEFINE_string("output", "", "write the results as JSON here", flag_values=FLAGS)


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)
  unknown = sorted(set(FLAGS.configs) - set(CONFIG_FILES))
  if unknown:
    raise app.UsageError(f"--configs: unknown {unknown}; choose from "
                         f"{sorted(CONFIG_FILES)}")
  if "camvid" in FLAGS.configs and not FLAGS.camvid_manual_dir:
    raise app.UsageError("--configs=camvid reads the real CamVid: give "
                         "--camvid_manual_dir=DIR (or set COWMIX_CAMVID_DIR), or leave "
                         "camvid out of --configs")
  results = {"machine": f"{machine.describe()}, allocator: {machine.allocator_environment()}",
             "configs": {}}
  print(f"Machine: {results['machine']}; U-Net ResNet-{FLAGS.depth}, CowMix, images per "
        f"second (labelled + unlabelled):\n")
  print("| config | crop | batch | input alone | step, fixed batch | fed, no prefetch | "
        "fed, prefetch | fed / fixed, no prefetch | fed / fixed, prefetch | "
        "page faults per step: fixed, fed, prefetch |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as scratch:
    for name in FLAGS.configs:
      manual_dir, available = FLAGS.camvid_manual_dir, None
      if name == "pascal":
        manual_dir = FLAGS.voc_manual_dir
        if not manual_dir:
          manual_dir = write_standin_voc(os.path.join(scratch, "voc"), FLAGS.voc_images)
          available = FLAGS.voc_images
      config = benchmark_config(name, manual_dir,
                                FLAGS.data_dir or os.path.join(scratch, "tfds"), FLAGS.depth,
                                available)
      row = {"input": input_rate(config, FLAGS.batches),
             **step_rates(config, FLAGS.steps, FLAGS.repeats)}
      row["fed_over_fixed"] = row["fed"] / row["fixed"]
      row["fed_prefetch_over_fixed"] = row["fed_prefetch"] / row["fixed"]
      results["configs"][name] = row
      height, width = config.data.augment.crop_size
      print(f"| {name} | {width}x{height} | {config.batch_size} + "
            f"{config.unlabelled_batch_size} | {row['input']:.1f} | {row['fixed']:.2f} | "
            f"{row['fed']:.2f} | {row['fed_prefetch']:.2f} | {row['fed_over_fixed']:.3f} | "
            f"{row['fed_prefetch_over_fixed']:.3f} | {row['fixed_page_faults']:,.0f}, "
            f"{row['fed_page_faults']:,.0f}, {row['fed_prefetch_page_faults']:,.0f} |",
            flush=True)
      if FLAGS.output:  # after each config, so a run stopped early keeps what it measured
        with open(FLAGS.output, "w") as f:
          json.dump(results, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
