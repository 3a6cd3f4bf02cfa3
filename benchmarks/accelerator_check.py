"""One look at an accelerator: run by ``benchmarks/accelerator_check.sh`` (see there).

For the paper's CamVid and Pascal configs (U-Net ResNet-50, random init), in float32 and
bfloat16, on the first device: seconds per CowMix train step and images per second on a
fixed batch, the model FLOP utilisation (XLA's FLOPs of the step over the time, against
the device's matmul rate measured here, and against its datasheet peak when known), the
device's peak memory in use, fed / fixed with the real input pipeline (Pascal on a
stand-in VOC tree; CamVid when ``--camvid_manual_dir`` exists), and whether the device agrees
with the CPU on a fixed batch: the cow masks of one key, and one train step of a small
U-Net (loss and updated parameters).

``--tiny`` runs everything at toy sizes (a 64x64 crop, a narrow ResNet-18 U-Net): on a
CPU it finishes in a few minutes, which is how the test suite runs this script.

python -m benchmarks.accelerator_check [--tiny] [--steps=5] [--output=results.json]
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.sharding import Mesh

from benchmarks import input_pipeline
from benchmarks.batches import random_batch
from cowmix_jax import cli, config_base, mixing, models, optimizers, sharding, steps
from cowmix_jax.state import create_train_state

CONFIGS = {"camvid": "configs/camvid.py", "pascal": "configs/pascal.py"}
DTYPES = ("float32", "bfloat16")
# Dense datasheet peaks, TFLOP/s, by jax's device_kind prefix: (float32, bfloat16). The
# float32 figure is the plain (non-TF32) one.
DATASHEET_TFLOPS = {
    "NVIDIA H200": (67.0, 989.0), "NVIDIA H100": (67.0, 989.0),
    "NVIDIA A100": (19.5, 312.0), "NVIDIA L4": (30.3, 121.0),
    "Tesla V100": (15.7, 125.0), "NVIDIA GeForce RTX 4090": (82.6, 165.0),
    "TPU v4": (None, 275.0), "TPU v5 lite": (None, 197.0), "TPU v5p": (None, 459.0),
    "TPU v6 lite": (None, 918.0),
}


def datasheet_peak(device_kind: str, dtype: str) -> float | None:
  """FLOP/s of the device's datasheet for ``dtype``, or None when unknown."""
  for prefix, peaks in DATASHEET_TFLOPS.items():
    if device_kind.startswith(prefix):
      value = peaks[DTYPES.index(dtype)]
      return None if value is None else value * 1e12
  return None


def measured_matmul_peak(dtype: str, size: int, device) -> float:
  """FLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on ``device`` (best of 5)."""
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(5):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def check_config(name: str, dtype: str, tiny: bool):
  """The paper config ``name`` in ``dtype`` (random init); at toy sizes with ``tiny``."""
  config = config_base.load_config_file(CONFIGS[name])
  config.model.pretrained = ""
  config.model.dtype = dtype
  if tiny:
    config.data.augment.crop_size = (64, 64)
    config.batch_size, config.unlabelled_batch_size = 1, 2
    config.model.depth, config.model.width = 18, 8
    config.model.decoder_widths = (16, 16, 8, 8, 8, 8)
    config.mask.cow_sigma_range = (2.0, 8.0)
  return config


def step_on(config, device, batch):
  """``(train_step, state, device batch)`` of ``config`` on ``device`` alone."""
  mesh = Mesh(np.array([device]), (sharding.DATA_AXIS,))
  model = models.build_model(config.model, 11)
  tx = optimizers.make_optimizer(config)
  input_shape = (1,) + tuple(config.data.augment.crop_size) + (3,)
  state = create_train_state(model, tx, jax.random.PRNGKey(0), input_shape)
  state = jax.device_put(state, sharding.replicated(mesh))
  return steps.make_train_step(model, tx, config, mesh), state, sharding.shard_batch(batch, mesh)


def time_step(config, device, num_steps: int) -> dict[str, float]:
  """Seconds per step, images per second and XLA's FLOPs per step on a fixed batch."""
  train_step, state, batch = step_on(config, device, random_batch(config))
  flops = float(train_step.lower(state, batch).compile().cost_analysis()["flops"])
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / num_steps
  images = config.batch_size + config.unlabelled_batch_size
  return {"seconds_per_step": seconds, "images_per_second": images / seconds,
          "flops_per_step": flops}


def peak_memory_in_use(device) -> int | None:
  """The device's peak bytes in use since the process started (None on CPUs)."""
  stats = device.memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


def masks_agree(config, device, cpu) -> float:
  """Fraction of cow-mask pixels that differ between ``device`` and the CPU for one key."""
  perturbation = mixing.make_perturbation(config)
  height, width = config.data.augment.crop_size
  images = jnp.zeros((4, height, width, 3))
  key = jax.random.PRNGKey(7)

  def draw(on):
    sample = jax.jit(perturbation.sample)
    return np.asarray(sample(jax.device_put(key, on), jax.device_put(images, on))["mask"])

  return float(np.mean(draw(device) != draw(cpu)))


def step_agrees(device, cpu) -> dict[str, float]:
  """One float32 CowMix step of a small U-Net on ``device`` and on the CPU, full matmul
  precision: the relative difference of the losses and of the updated parameters."""
  config = check_config("camvid", "float32", tiny=True)
  batch = random_batch(config, seed=1)
  results = []
  with jax.default_matmul_precision("highest"):
    for on in (device, cpu):
      train_step, state, device_batch = step_on(config, on, batch)
      before = jax.tree.map(np.asarray, state.params)
      state, metrics = train_step(state, device_batch)
      after = jax.tree.map(np.asarray, state.params)
      update = np.concatenate([(a - b).ravel() for a, b in
                               zip(jax.tree.leaves(after), jax.tree.leaves(before))])
      results.append((float(metrics["loss"]), update))
  (device_loss, device_update), (cpu_loss, cpu_update) = results
  return {"loss_relative_difference": abs(device_loss - cpu_loss) / abs(cpu_loss),
          "update_relative_difference": float(np.linalg.norm(device_update - cpu_update) /
                                              np.linalg.norm(cpu_update))}


def fed_over_fixed(name: str, tiny: bool, camvid_dir: str, scratch: str, steps_: int):
  """fed / fixed of the input pipeline for config ``name`` (None without its data)."""
  if name == "camvid":
    if not camvid_dir or not os.path.isdir(camvid_dir):
      return None
    manual_dir, available = camvid_dir, None
  else:
    count = 24 if tiny else 128
    manual_dir = input_pipeline.write_standin_voc(os.path.join(scratch, "voc"), count)
    available = count
  config = input_pipeline.benchmark_config(name, manual_dir, os.path.join(scratch, "tfds"),
                                           18 if tiny else 50, available)
  if tiny:
    config.data.augment.crop_size = (64, 64)
    config.batch_size, config.unlabelled_batch_size = 1, 2
    config.data.num_labelled = min(config.data.num_labelled, 4)
    config.model.width, config.model.decoder_widths = 8, (16, 16, 8, 8, 8, 8)
    config.mask.cow_sigma_range = (2.0, 8.0)
  rates = input_pipeline.step_rates(config, steps_, repeats=2)
  return rates["fed_prefetch"] / rates["fixed"]


FLAGS = cli.new_flags()
flags.DEFINE_boolean("tiny", False, "toy sizes (for a CPU, and the test suite)",
                     flag_values=FLAGS)
flags.DEFINE_integer("steps", 5, "timed steps per config", flag_values=FLAGS)
flags.DEFINE_string("camvid_manual_dir", os.environ.get("COWMIX_CAMVID_DIR", ""),
                    "CamVid, for its fed / fixed (skipped when '' or missing)",
                    flag_values=FLAGS)
flags.DEFINE_string("output", "", "write the results as JSON here", flag_values=FLAGS)


def _format_bytes(n: int | None) -> str:
  return "n/a (the CPU keeps no count)" if n is None else f"{n / 2**30:.2f} GiB"


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)
  device, cpu = jax.devices()[0], jax.devices("cpu")[0]
  kind = device.device_kind
  results = {"device": f"{device.platform} {kind}", "host": f"{platform.machine()}, "
             f"{os.cpu_count()} CPU cores", "jax": jax.__version__, "tiny": FLAGS.tiny,
             "configs": {}}
  print(f"Device: {results['device']} (host {results['host']}, JAX {jax.__version__})"
        + (" [--tiny: toy sizes]" if FLAGS.tiny else ""), flush=True)
  matmul_size = 512 if FLAGS.tiny else 8192
  peaks = {dtype: measured_matmul_peak(dtype, matmul_size, device) for dtype in DTYPES}
  print("Measured matmul rate: " + ", ".join(f"{d} {peaks[d] / 1e12:.2f} TFLOP/s"
                                             for d in DTYPES), flush=True)
  print("\n| config | dtype | s/step | images/s | GFLOP/step | MFU (measured matmul) "
        "| MFU (datasheet) |")
  print("|---|---|---|---|---|---|---|")
  for name in CONFIGS:
    for dtype in DTYPES:
      config = check_config(name, dtype, FLAGS.tiny)
      row = time_step(config, device, FLAGS.steps)
      achieved = row["flops_per_step"] / row["seconds_per_step"]
      row["mfu_measured"] = achieved / peaks[dtype]
      sheet = datasheet_peak(kind, dtype)
      row["mfu_datasheet"] = None if sheet is None else achieved / sheet
      results["configs"][f"{name}_{dtype}"] = row
      print(f"| {name} | {dtype} | {row['seconds_per_step']:.3f} | "
            f"{row['images_per_second']:.2f} | {row['flops_per_step'] / 1e9:.1f} | "
            f"{row['mfu_measured']:.0%} | "
            f"{'unknown' if sheet is None else format(row['mfu_datasheet'], '.0%')} |",
            flush=True)
  results["peak_memory_bytes"] = peak_memory_in_use(device)
  print(f"\nPeak device memory in use: {_format_bytes(results['peak_memory_bytes'])}")
  with tempfile.TemporaryDirectory() as scratch:
    fed = {name: fed_over_fixed(name, FLAGS.tiny, FLAGS.camvid_manual_dir, scratch,
                                2 if FLAGS.tiny else FLAGS.steps) for name in CONFIGS}
  results["fed_over_fixed"] = fed
  print("Input fed / fixed (1.0: the input costs the step nothing): " + ", ".join(
      f"{name} {'skipped (no data)' if value is None else f'{value:.3f}'}"
      for name, value in fed.items()))
  mismatch = masks_agree(check_config("camvid", "float32", FLAGS.tiny), device, cpu)
  agreement = step_agrees(device, cpu)
  results.update(mask_pixels_differing_from_cpu=mismatch, **agreement)
  print(f"Against the CPU on a fixed batch: cow-mask pixels differing {mismatch:.2e}; one "
        f"step's loss differs by {agreement['loss_relative_difference']:.1e}, its "
        f"parameter update by {agreement['update_relative_difference']:.1e} (relative)")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
