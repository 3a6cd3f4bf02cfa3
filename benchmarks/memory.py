"""Memory of the paper's training steps, without an accelerator: XLA's memory analysis of
the compiled train step (``jit(...).lower(...).compile().memory_analysis()``) of each
paper config (CowMix) and of UniMatch's Pascal setting (its method), in float32 and
bfloat16, with and without ``config.model.remat``.

Prints a Markdown table of peak bytes (parameters, optimiser state, teacher, batch and
every temporary the step needs at once) and the smallest common GPU each run fits in,
(XLA:CPU would drop remat; this script keeps it, see KEEP_REMAT_FLAG),
then the step-time cost of remat, measured by running the steps on this machine at a
reduced size (``--time_size``; the full-size steps need more memory than a workstation
has). The figures are XLA:CPU's buffer assignment of the same program; a GPU's compiler
fuses differently and adds cuDNN workspace, so read them as estimates within tens of
percent (``benchmarks/accelerator_check.sh`` reads the real peak on a GPU). Kernel
gradients are XLA's own, as on an accelerator (``models.conv.xla_kernel_gradients``).

python -m benchmarks.memory [--runs=camvid_unet,cityscapes_deeplab_v2]
    [--dtypes=float32,bfloat16] [--time_runs=cityscapes_deeplab_v2,camvid_unet]
    [--time_size=128x256] [--output=results.json]
"""

from __future__ import annotations

import json
import os
import platform
import time

# XLA:CPU expands jax.checkpoint's optimisation barriers away (its cse_barrier_expander
# pass) and common-subexpression elimination then merges the recomputation back into the
# forward pass: on a CPU, remat saves nothing. GPU and TPU compilers keep the barriers.
# Keeping them here too makes the CPU compile the program an accelerator runs. Read when
# JAX starts its backend, so set before importing JAX.
KEEP_REMAT_FLAG = "--xla_disable_hlo_passes=cse_barrier_expander"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {KEEP_REMAT_FLAG}".strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import xla_memory  # noqa: E402
from cowmix_jax import cli, config_base, models, optimizers, sharding, steps  # noqa: E402
from cowmix_jax.models import conv  # noqa: E402
from cowmix_jax.state import create_train_state  # noqa: E402

# name -> (config file spec, classes): the paper's runs (Tables 1-3), and UniMatch V1's
# Pascal setting.
PAPER_RUNS = {
    "camvid_unet": ("configs/camvid.py", 11),
    "cityscapes_unet": ("configs/cityscapes.py", 19),
    "cityscapes_deeplab_v2": ("configs/cityscapes.py:deeplab_v2", 19),
    "pascal_unet": ("configs/pascal.py", 21),
    "pascal_deeplab_v2": ("configs/pascal.py:deeplab_v2", 21),
    "pascal_unimatch": ("configs/pascal.py:unimatch", 21),
}
# Common accelerator memory sizes, GiB (V100 16, RTX 3090/4090 24, A100 40, A100/H100 80,
# H200 141). A run "fits" when its peak is at most FIT_FRACTION of the card: the CUDA
# context and XLA's allocator need the rest.
GPU_SIZES_GIB = (16, 24, 40, 80, 141)
FIT_FRACTION = 0.9


def run_config(name: str, dtype: str, remat: bool, crop_size=None):
  """The paper run ``name``'s config with ``config.model.dtype`` and ``remat`` set (and
  the crops changed to ``crop_size`` (H, W) if given)."""
  spec, _ = PAPER_RUNS[name]
  config = config_base.load_config_file(spec)
  config.model.dtype = dtype
  config.model.remat = remat
  config.model.pretrained = ""  # shapes only: the weights' values change no byte
  if crop_size is not None:
    config.data.augment.crop_size = tuple(crop_size)
  return config


def batch_shapes(config) -> dict[str, jax.ShapeDtypeStruct]:
  """The train step's batch as the input pipeline delivers it."""
  height, width = config.data.augment.crop_size
  labelled, unlabelled = config.batch_size, config.unlabelled_batch_size
  return {
      "image": jax.ShapeDtypeStruct((labelled, height, width, 3), jnp.float32),
      "label": jax.ShapeDtypeStruct((labelled, height, width), jnp.int32),
      "unlabelled_image": jax.ShapeDtypeStruct((unlabelled, height, width, 3), jnp.float32),
      "unlabelled_valid": jax.ShapeDtypeStruct((unlabelled, height, width), jnp.float32),
  }


def build_step(config, num_classes: int):
  """``(train_step, state shapes)`` of ``config`` on one device."""
  mesh = sharding.make_mesh(1)
  model = models.build_model(config.model, num_classes)
  tx = optimizers.make_optimizer(config)
  input_shape = (1,) + tuple(config.data.augment.crop_size) + (3,)
  state = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.PRNGKey(0),
                                                    input_shape))
  return steps.make_train_step(model, tx, config, mesh), state


def peak_bytes(config, num_classes: int) -> dict[str, int]:
  """XLA's memory analysis of the compiled train step: ``peak`` = arguments (state and
  batch) + temporaries + outputs not written over the donated state, and those parts.

  Raises RuntimeError if remat was asked for but the compiled program has no
  optimisation barrier left (KEEP_REMAT_FLAG did not reach XLA: JAX was imported first).
  """
  with conv.xla_kernel_gradients():  # the accelerator's program, not the CPU's
    train_step, state = build_step(config, num_classes)
    compiled = train_step.lower(state, batch_shapes(config)).compile()
  if config.model.remat and "opt-barrier" not in compiled.as_text():
    raise RuntimeError(f"XLA removed remat's barriers: set XLA_FLAGS={KEEP_REMAT_FLAG} "
                       f"before JAX is imported")
  return xla_memory.compiled_memory(compiled)


def smallest_gpu(peak: int) -> str:
  """The smallest of GPU_SIZES_GIB the peak fits in, e.g. ``"24 GB"``, or ``"> 141 GB"``."""
  for size in GPU_SIZES_GIB:
    if peak <= FIT_FRACTION * size * 2**30:
      return f"{size} GB"
  return f"> {GPU_SIZES_GIB[-1]} GB"


def random_batch(config, key) -> dict[str, jax.Array]:
  """A batch of ``batch_shapes(config)`` with random images and labels."""
  shapes = batch_shapes(config)
  image_key, unlabelled_key, label_key = jax.random.split(key, 3)
  return {
      "image": jax.random.normal(image_key, shapes["image"].shape),
      "label": jax.random.randint(label_key, shapes["label"].shape, 0, 5),
      "unlabelled_image": jax.random.normal(unlabelled_key, shapes["unlabelled_image"].shape),
      "unlabelled_valid": jnp.ones(shapes["unlabelled_valid"].shape),
  }


def step_seconds(name: str, crop_size, num_steps: int, repeats: int) -> dict[bool, float]:
  """Seconds per train step of run ``name`` at ``crop_size``, float32, without and with
  remat: the two steps alternate ``repeats`` times (shared-machine noise hits both), and
  the median of each is kept."""
  runners = {}
  for remat in (False, True):
    config = run_config(name, "float32", remat, crop_size)
    mesh = sharding.make_mesh(1)
    model = models.build_model(config.model, PAPER_RUNS[name][1])
    tx = optimizers.make_optimizer(config)
    state = create_train_state(model, tx, jax.random.PRNGKey(0),
                               (1,) + tuple(crop_size) + (3,))
    state = jax.device_put(state, sharding.replicated(mesh))
    batch = sharding.shard_batch(jax.device_get(random_batch(config, jax.random.PRNGKey(1))),
                                 mesh)
    train_step = steps.make_train_step(model, tx, config, mesh)
    state, metrics = train_step(state, batch)  # compile
    jax.block_until_ready(metrics)
    runners[remat] = [train_step, state, batch]
  times = {False: [], True: []}
  for _ in range(repeats):
    for remat, runner in runners.items():
      train_step, state, batch = runner
      start = time.perf_counter()
      for _ in range(num_steps):
        state, metrics = train_step(state, batch)
      jax.block_until_ready(metrics)
      times[remat].append((time.perf_counter() - start) / num_steps)
      runner[1] = state
  return {remat: float(np.median(values)) for remat, values in times.items()}


def _gib(n: int) -> str:
  return f"{n / 2**30:.2f}"


def _describe(config) -> str:
  height, width = config.data.augment.crop_size
  model = config.model.name
  if model == "unet":
    model = f"U-Net R{config.model.depth}"
  elif model == "deeplab_v2":
    model = f"DeepLab v2 R{config.model.depth}"
  return f"{model}, {width}x{height}, batch {config.batch_size} + {config.unlabelled_batch_size}"


FLAGS = cli.new_flags()
flags.DEFINE_list("runs", list(PAPER_RUNS), f"paper runs, of {sorted(PAPER_RUNS)}",
                  flag_values=FLAGS)
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "config.model.dtype values",
                  flag_values=FLAGS)
flags.DEFINE_list("time_runs", ["cityscapes_deeplab_v2", "camvid_unet"],
                  "runs whose remat step-time cost is measured ('' = none)", flag_values=FLAGS)
flags.DEFINE_string("time_size", "128x256", "HxW of the timed steps", flag_values=FLAGS)
flags.DEFINE_integer("time_steps", 2, "steps per timed repetition", flag_values=FLAGS)
flags.DEFINE_integer("time_repeats", 3, "alternating repetitions", flag_values=FLAGS)
flags.DEFINE_string("output", "", "write the results as JSON here", flag_values=FLAGS)


def _check_runs(names) -> None:
  unknown = sorted(set(names) - set(PAPER_RUNS))
  if unknown:
    raise app.UsageError(f"--runs / --time_runs: unknown {unknown}; choose from "
                         f"{sorted(PAPER_RUNS)}")


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)
  _check_runs(FLAGS.runs)
  _check_runs(FLAGS.time_runs)
  results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
                        f"cores, JAX {jax.__version__} on {jax.devices()[0].platform}",
             "memory": [], "remat_step_time": []}
  print(f"Machine: {results['machine']}. Peak memory of each run's train step (GiB), "
        f"from XLA's memory analysis:\n")
  print("| run | dtype | peak | peak with remat | remat saves | fits in | with remat fits in |")
  print("|---|---|---|---|---|---|---|")
  for name in FLAGS.runs:
    for dtype in FLAGS.dtypes:
      row = {"run": name, "dtype": dtype}
      for remat in (False, True):
        config = run_config(name, dtype, remat)
        row["description"] = _describe(config)
        row["remat" if remat else "plain"] = peak_bytes(config, PAPER_RUNS[name][1])
      plain, remat = row["plain"]["peak"], row["remat"]["peak"]
      results["memory"].append(row)
      print(f"| {name} ({row['description']}) | {dtype} | {_gib(plain)} | {_gib(remat)} | "
            f"{1 - remat / plain:.0%} | {smallest_gpu(plain)} | {smallest_gpu(remat)} |",
            flush=True)
  crop = tuple(int(v) for v in FLAGS.time_size.split("x"))
  if FLAGS.time_runs:
    print(f"\nStep time with remat, float32, crops {crop[1]}x{crop[0]} on this machine "
          f"(median of {FLAGS.time_repeats} alternating repetitions of {FLAGS.time_steps} "
          f"steps):\n")
    print("| run | s/step | s/step with remat | remat / plain |")
    print("|---|---|---|---|")
  for name in FLAGS.time_runs:
    seconds = step_seconds(name, crop, FLAGS.time_steps, FLAGS.time_repeats)
    results["remat_step_time"].append({"run": name, "crop_size": crop,
                                       "plain_s": seconds[False], "remat_s": seconds[True]})
    print(f"| {name} | {seconds[False]:.2f} | {seconds[True]:.2f} | "
          f"{seconds[True] / seconds[False]:.2f} |", flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  cli.run(main)
