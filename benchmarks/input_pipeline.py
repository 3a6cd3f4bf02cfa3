"""Is the input pipeline the bottleneck? CamVid at the paper's crop size, on this machine.

Measures, in one process:
  1. the tf.data training input alone (labelled + unlabelled streams of configs/camvid.py,
     and the same with heavy augmentation: scale 0.5-1.5, rotation, colour jitter);
  2. the jitted CowMix train step alone, fed one fixed batch;
  3. the train step fed by the input pipeline (what training really does).
The ratio of 3 to 2 says how much input costs the training loop (1.0: nothing).

python benchmarks/input_pipeline.py --manual_dir=../shared/data/camvid [--data_dir=DIR]
    [--depth=50] [--steps=10] [--output=results.json]
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import numpy as np
from absl import flags

from cowmix_jax import cli, config_base, models, sharding, steps, train
from cowmix_jax.data import make_inputs
from cowmix_jax.state import create_train_state


def _camvid_config(heavy: bool):
  config = config_base.load_config_file("configs/camvid.py")
  config.data.manual_dir = FLAGS.manual_dir
  config.data.data_dir = FLAGS.data_dir
  config.model.depth = FLAGS.depth
  if heavy:
    config.data.augment.update(dict(scale_range=(0.5, 1.5), rotation_degrees=15.0,
                                    brightness_std=0.1, contrast_log_std=0.1))
  return config


def _images_per_batch(config) -> int:
  return config.batch_size + config.unlabelled_batch_size


def time_input(config, num_batches: int) -> float:
  """Images per second of the training input alone."""
  inputs = make_inputs(config)
  for _ in range(5):  # warm up: file reads, tf.function tracing, the labelled cache
    next(inputs.train)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(inputs.train)
  return num_batches * _images_per_batch(config) / (time.perf_counter() - start)


def time_train_step(config, num_steps: int) -> tuple[float, float]:
  """Images per second of the train step on a fixed batch, and fed by the pipeline."""
  inputs = make_inputs(config)
  mesh = sharding.make_mesh(1)
  model = models.build_model(config.model, inputs.num_classes)
  tx = train.make_optimizer(config)
  state = create_train_state(model, tx, jax.random.PRNGKey(0),
                             (1,) + tuple(config.data.augment.crop_size) + (3,))
  state = jax.device_put(state, sharding.replicated(mesh))
  train_step = steps.make_train_step(model, tx, config, mesh)
  fixed = sharding.shard_batch(next(inputs.train), mesh)
  state, metrics = train_step(state, fixed)  # compile
  jax.block_until_ready(metrics)

  def run(feed) -> float:
    nonlocal state
    start = time.perf_counter()
    for _ in range(num_steps):
      state, metrics = train_step(state, feed())
    jax.block_until_ready(metrics)
    return num_steps * _images_per_batch(config) / (time.perf_counter() - start)

  fixed_rate = run(lambda: fixed)
  fed_rate = run(lambda: sharding.shard_batch(next(inputs.train), mesh))
  return fixed_rate, fed_rate


FLAGS = cli.new_flags()
flags.DEFINE_string("manual_dir", os.environ.get("COWMIX_CAMVID_DIR", "../shared/data/camvid"),
                    "CamVid's directory", flag_values=FLAGS)
flags.DEFINE_string("data_dir", "", "prepared datasets ('' = tfds default)", flag_values=FLAGS)
flags.DEFINE_integer("depth", 50, "ResNet depth of the U-Net", flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "train steps to time", flag_values=FLAGS)
flags.DEFINE_integer("batches", 100, "input batches to time", flag_values=FLAGS)
flags.DEFINE_string("output", "", "write the results as JSON here", flag_values=FLAGS)


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)

  config = _camvid_config(heavy=False)
  crop = tuple(config.data.augment.crop_size)
  results = {
      "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                 f"JAX on {jax.devices()[0].platform}",
      "crop_size": crop,
      "images_per_step": _images_per_batch(config),
      "input_images_per_s": time_input(config, FLAGS.batches),
      "input_images_per_s_heavy_augmentation": time_input(_camvid_config(True),
                                                          FLAGS.batches),
  }
  fixed_rate, fed_rate = time_train_step(config, FLAGS.steps)
  results["train_step_images_per_s_fixed_batch"] = fixed_rate
  results["train_step_images_per_s_fed_by_pipeline"] = fed_rate
  results["input_over_train_step"] = results["input_images_per_s"] / fixed_rate
  results["fed_over_fixed"] = fed_rate / fixed_rate
  print(f"Machine: {results['machine']}")
  print(f"CamVid, crops {crop[0]}x{crop[1]}, {results['images_per_step']} images per step "
        f"(1 labelled + 2 unlabelled), U-Net ResNet-{FLAGS.depth}, CowMix:")
  print(f"  input pipeline alone:               {results['input_images_per_s']:8.1f} images/s")
  print(f"  ... with heavy augmentation:        "
        f"{results['input_images_per_s_heavy_augmentation']:8.1f} images/s")
  print(f"  train step alone (fixed batch):     {fixed_rate:8.2f} images/s")
  print(f"  train step fed by the pipeline:     {fed_rate:8.2f} images/s")
  print(f"  input / train step:                 {results['input_over_train_step']:8.1f}x")
  print(f"  fed / fixed (1.0 = input is free):  {results['fed_over_fixed']:8.3f}")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  cli.run(main)
