"""Times each convolution's kernel gradient two ways, in one process, and prints ratios.

For every distinct convolution of a paper network (read from the jaxpr of its forward
pass at the given batch and size):
  xla     XLA's own kernel gradient (``jax.vjp`` of ``lax.conv_general_dilated`` with
          respect to the kernel), which XLA:CPU computes as a convolution whose window
          is the whole image
  matmul  ``cowmix_jax.models.conv.kernel_gradient``: one matrix product per tap
and which one ``conv.kernel_gradient_by_matmul`` picks (the rule the models use on the
CPU). The table is the evidence for that rule; rerun it on another CPU to check it.

Usage: python -m benchmarks.conv_grad [--network=resnet50] [--size=384x480] [--batch=2]
    [--repeats=3] [--output=results.json]
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax import lax

from cowmix_jax import cli, config_base, models
from cowmix_jax.models import conv

FLAGS = cli.new_flags()
flags.DEFINE_enum("network", "resnet50", ["resnet50", "lite0", "deeplab_v2"],
                  "U-Net on ResNet-50 or EfficientNet-Lite0, or DeepLab v2 (ResNet-101)",
                  flag_values=FLAGS)
flags.DEFINE_string("size", "384x480", "HxW of the images", flag_values=FLAGS)
flags.DEFINE_integer("batch", 2, "images per student pass (CamVid CowMix: 1 + 1)",
                     flag_values=FLAGS)
flags.DEFINE_integer("repeats", 3, "timed repetitions per route (best is kept)",
                     flag_values=FLAGS)
flags.DEFINE_string("output", "", "write the results as JSON here", flag_values=FLAGS)

NUM_CLASSES = 11


def model_config(network: str):
  if network == "deeplab_v2":
    return config_base.get_model_config(name="deeplab_v2", depth=101)
  if network == "lite0":
    return config_base.get_model_config(name="unet", encoder="efficientnet_lite")
  return config_base.get_model_config(name="unet", depth=50)


def convolutions(network: str, batch: int, size) -> list[dict]:
  """The distinct dense 2-D convolutions of the network's forward pass: input and
  kernel shapes, strides, padding and kernel dilation (grouped ones are skipped: they
  never take the matmul route)."""
  model = models.build_model(model_config(network), NUM_CLASSES)
  images = jax.ShapeDtypeStruct((batch, *size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True,
                                                  mutable=["batch_stats"]))(variables, images)
  found = {}

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated" and eqn.params[
          "feature_group_count"] == 1:
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        key = (lhs, rhs, eqn.params["window_strides"], tuple(eqn.params["padding"]),
               eqn.params["rhs_dilation"])
        found[key] = found.get(key, 0) + 1
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return [dict(lhs=k[0], rhs=k[1], strides=k[2], padding=k[3], dilation=k[4], count=n)
          for k, n in found.items()]


def best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def time_one(c: dict, repeats: int) -> dict:
  """Seconds of each route's kernel gradient for convolution ``c``, at random data."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(c["lhs"]), jnp.float32)
  w = jnp.asarray(rng.standard_normal(c["rhs"]) * 0.05, jnp.float32)

  def forward(x, w):
    return lax.conv_general_dilated(x, w, c["strides"], c["padding"],
                                    rhs_dilation=c["dilation"],
                                    dimension_numbers=conv.CHANNELS_LAST)

  dy = jnp.asarray(rng.standard_normal(jax.eval_shape(forward, x, w).shape), jnp.float32)
  xla = jax.jit(lambda x, dy: jax.vjp(lambda w_: forward(x, w_), w)[1](dy)[0])
  matmul = jax.jit(lambda x, dy: conv.kernel_gradient(
      x, dy, c["rhs"][:2], c["strides"], c["padding"], c["dilation"]))
  seconds = {"xla": best_seconds(xla, x, dy, repeats=repeats),
             "matmul": best_seconds(matmul, x, dy, repeats=repeats)}
  return dict(seconds, positions=int(np.prod(dy.shape[:3])),
              picked="matmul" if conv.kernel_gradient_by_matmul(
                  c["rhs"], int(np.prod(dy.shape[:3]))) else "xla")


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)
  size = tuple(int(v) for v in FLAGS.size.split("x"))
  print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, JAX "
        f"{jax.__version__} on {jax.default_backend()}. Kernel gradients of "
        f"{FLAGS.network} at batch {FLAGS.batch}, {size[0]}x{size[1]}, float32, best of "
        f"{FLAGS.repeats}:\n", flush=True)
  print("| input | kernel | stride | padding | dilation | layers | positions | xla ms "
        "| matmul ms | xla / matmul | picked |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  rows, total = [], {"xla": 0.0, "matmul": 0.0, "picked": 0.0}
  for c in convolutions(FLAGS.network, FLAGS.batch, size):
    row = dict(c, **time_one(c, FLAGS.repeats))
    rows.append(row)
    for route in ("xla", "matmul"):
      total[route] += row[route] * c["count"]
    total["picked"] += row[row["picked"]] * c["count"]
    print(f"| {row['lhs']} | {row['rhs']} | {row['strides'][0]} | {row['padding']} | "
          f"{row['dilation'][0]} | "
          f"{c['count']} | {row['positions']:,} | {row['xla'] * 1e3:.1f} | "
          f"{row['matmul'] * 1e3:.1f} | {row['xla'] / row['matmul']:.2f} | "
          f"{row['picked']} |", flush=True)
  print(f"\nAll kernel gradients of one pass: xla {total['xla']:.2f} s, matmul "
        f"{total['matmul']:.2f} s, as picked {total['picked']:.2f} s "
        f"({total['xla'] / total['picked']:.2f}x faster than xla).")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"network": FLAGS.network, "size": size, "batch": FLAGS.batch,
                 "rows": rows, "total_seconds": total}, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
