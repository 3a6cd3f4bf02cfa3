"""How long does one training step cost at a given CPU scale? (finds configs/camvid_cpu.py)

Times the jitted train step on a fixed random batch for each combination of encoder,
input size and method, all in one process, and prints seconds per step, the
estimated minutes of a run of ``--run_steps`` steps and the step's peak memory (XLA's
memory analysis of the compiled CPU program: state, batch and temporaries at once,
``xla_memory.compiled_memory``). The ratio columns are against the first row (the same
process, so shared-machine noise cancels in the time).

Encoders are either ``--encoders`` specs, ``resnet<depth>x<width factor>`` (a ResNet
U-Net whose encoder and decoder widths are scaled, BatchNorm training, as in the
random-init CPU protocol) and ``lite<n>`` or ``lite<n>x<decoder factor>`` (the
EfficientNet-Lite U-Net with frozen BatchNorm, the decoder widths scaled), or, without
``--encoders``, the ResNet grid ``--depths`` x ``--widths``. ``--downscale 4`` draws the
cow masks and the strong views' blur with the sigmas of images shrunk 4 times, as the
CPU-scale CamVid protocol does (``configs/camvid_cpu.py``); the default, 1, the paper's:

python -m benchmarks.cpu_scale --sizes 90x120,180x240,360x480 \\
    --encoders resnet18x0.5,lite0,lite1 --methods supervised,cowmix --batch 1 --unlabelled 2
python -m benchmarks.cpu_scale --sizes 96x128,128x160,192x256 --depths 18,34 \\
    --widths 1.0,0.5 --methods supervised,cowmix --run_steps 3000 [--output=F.json]
"""

from __future__ import annotations

import itertools
import json
import re
import time

import jax
import numpy as np
from absl import flags

from benchmarks import machine as machine_line
from benchmarks import xla_memory
from cowmix_jax import cli, models, optimizers, sharding, steps
from cowmix_jax.config_base import get_base_config, get_camvid_cpu_config
from cowmix_jax.state import create_train_state

NUM_CLASSES = 11


def _scaled(widths, factor: float):
  return tuple(max(8, int(round(w * factor))) for w in widths)


def scaled_config(encoder: str, method: str, batch: int, unlabelled: int,
                  downscale: int = 1):
  """The base config with a U-Net on ``encoder`` (a spec, see the module docstring), its
  cow-mask and blur sigmas those of images shrunk ``downscale`` times."""
  match = re.fullmatch(r"(resnet(\d+)|lite(\d))(?:x([\d.]+))?", encoder)
  if not match:
    raise ValueError(f"encoder spec {encoder!r}: expected resnet<depth>x<factor> or "
                     f"lite<n>[x<decoder factor>]")
  factor = float(match.group(4) or 1.0)
  config = get_base_config()
  config.method = method
  config.batch_size = batch
  config.unlabelled_batch_size = unlabelled
  config.model.decoder_widths = _scaled(config.model.decoder_widths, factor)
  if downscale != 1:
    shrunk = get_camvid_cpu_config(downscale)
    config.mask.cow_sigma_range = shrunk.mask.cow_sigma_range
    config.strong_blur_sigma_range = shrunk.strong_blur_sigma_range
  if match.group(2):
    config.model.depth = int(match.group(2))
    config.model.width = max(8, int(round(64 * factor)))
    config.model.freeze_bn = False
  else:
    config.model.encoder = "efficientnet_lite"
    config.model.encoder_variant = f"lite{match.group(3)}"
    config.model.freeze_bn = True
  return config


def random_batch(size, batch: int, unlabelled: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  h, w = size
  return {
      "image": rng.normal(size=(batch, h, w, 3)).astype(np.float32),
      "label": rng.integers(0, NUM_CLASSES, size=(batch, h, w)).astype(np.int32),
      "unlabelled_image": rng.normal(size=(unlabelled, h, w, 3)).astype(np.float32),
      "unlabelled_valid": np.ones((unlabelled, h, w), np.float32),
  }


def measure_step(config, size, num_steps: int) -> tuple[float, dict[str, int]]:
  """``(seconds per step, xla_memory.compiled_memory of the step)``: the train step of
  ``config`` compiled once for a random batch of ``size``, then run ``num_steps`` times.
  The memory is this CPU program's (its kernel gradients as XLA:CPU runs them)."""
  mesh = sharding.make_mesh(1)
  model = models.build_model(config.model, NUM_CLASSES)
  tx = optimizers.make_optimizer(config)
  state = create_train_state(model, tx, jax.random.PRNGKey(0), (1,) + tuple(size) + (3,))
  state = jax.device_put(state, sharding.replicated(mesh))
  train_step = steps.make_train_step(model, tx, config, mesh)
  batch = random_batch(size, config.batch_size, config.unlabelled_batch_size)
  if config.method == "supervised":
    batch = {k: v for k, v in batch.items() if not k.startswith("unlabelled")}
  batch = sharding.shard_batch(batch, mesh)
  compiled = train_step.lower(state, batch).compile()
  memory = xla_memory.compiled_memory(compiled)
  state, metrics = compiled(state, batch)  # the first call allocates
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  return (time.perf_counter() - start) / num_steps, memory


def parse_size(text: str):
  h, w = text.lower().split("x")
  return int(h), int(w)


FLAGS = cli.new_flags()
flags.DEFINE_string("sizes", "96x128", "HxW crops, comma-separated", flag_values=FLAGS)
flags.DEFINE_string("encoders", "", "encoder specs (resnet18x0.5, lite0, lite1x0.5, ...); when "
                    "given, --depths and --widths are not used", flag_values=FLAGS)
flags.DEFINE_string("depths", "18", "ResNet depths, comma-separated", flag_values=FLAGS)
flags.DEFINE_string("widths", "1.0", "channel width factors", flag_values=FLAGS)
flags.DEFINE_string("methods", "supervised,cowmix", "methods, comma-separated",
                    flag_values=FLAGS)
flags.DEFINE_integer("batch", 4, "labelled images per step", flag_values=FLAGS)
flags.DEFINE_integer("unlabelled", 4, "unlabelled images per step", flag_values=FLAGS)
flags.DEFINE_integer("downscale", 1, "sigmas of cow masks and blur for images shrunk this "
                     "many times (4: the CPU-scale protocol's)", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("steps", 10, "steps timed per setting", flag_values=FLAGS)
flags.DEFINE_integer("run_steps", 3000, "steps of a whole run", flag_values=FLAGS)
flags.DEFINE_string("output", "", "write the rows as JSON here", flag_values=FLAGS)


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)

  machine = f"{machine_line.describe()}, allocator: {machine_line.allocator_environment()}"
  print(f"Machine: {machine}; batch {FLAGS.batch} labelled + {FLAGS.unlabelled} unlabelled")
  encoders = FLAGS.encoders.split(",") if FLAGS.encoders else [
      f"resnet{depth}x{width}" for depth in FLAGS.depths.split(",")
      for width in FLAGS.widths.split(",")]
  print(f"{'size':>9} {'encoder':>14} {'method':>10} {'s/step':>8} {'ratio':>6} "
        f"{'min/run':>8} {'peak MiB':>9} {'ratio':>6}")
  rows, first = [], None
  grid = itertools.product(FLAGS.sizes.split(","), encoders, FLAGS.methods.split(","))
  for size_text, encoder, method in grid:
    size = parse_size(size_text)
    config = scaled_config(encoder, method, FLAGS.batch, FLAGS.unlabelled, FLAGS.downscale)
    seconds, memory = measure_step(config, size, FLAGS.steps)
    first = first or (seconds, memory["peak"])
    row = dict(size=size, encoder=encoder, method=method,
               seconds_per_step=seconds, ratio_to_first=seconds / first[0],
               minutes_per_run=seconds * FLAGS.run_steps / 60,
               peak_bytes=memory["peak"], peak_ratio_to_first=memory["peak"] / first[1],
               memory=memory)
    rows.append(row)
    print(f"{size_text:>9} {encoder:>14} {method:>10} {seconds:8.3f} "
          f"{row['ratio_to_first']:6.2f} {row['minutes_per_run']:8.1f} "
          f"{memory['peak'] / 2**20:9.1f} {row['peak_ratio_to_first']:6.2f}", flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"machine": machine, "args": cli.settings(FLAGS), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
