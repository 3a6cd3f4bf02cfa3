"""Parameters and forward FLOPs per image of U-Nets, as a Markdown table (docs/MODELS.md's
model table).

FLOPs come from XLA's cost analysis of the compiled inference forward pass (a
multiply-add counts 2; ``cowmix_jax/models/summary.py``), at each input size; the
network pads inputs to a multiple of 32 inside, and the count includes that padding.

python -m benchmarks.model_table --encoders resnet50,resnet18x0.5,lite0,lite1,lite2 \\
    --sizes 360x480,90x120
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks.cpu_scale import scaled_config
from cowmix_jax import cli, models
from cowmix_jax.models import summary

NUM_CLASSES = 11


def model_config(spec: str):
  """A U-Net model config from ``cpu_scale.py``'s encoder spec."""
  return scaled_config(spec, "supervised", 1, 2).model


FLAGS = cli.new_flags()
flags.DEFINE_string("encoders", "resnet50,resnet18x0.5,lite0,lite1,lite2",
                    "cpu_scale.py encoder specs (resnet50 is the paper's U-Net)", flag_values=FLAGS)
flags.DEFINE_string("sizes", "360x480,90x120", "HxW, comma-separated", flag_values=FLAGS)


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)
  sizes = [tuple(int(v) for v in text.split("x")) for text in FLAGS.sizes.split(",")]
  header = "| U-Net encoder | parameters | encoder parameters | " + " | ".join(
      f"GFLOPs at {w}x{h}" for h, w in sizes) + " |"
  print(header)
  print("|" + "---|" * (3 + len(sizes)))
  for spec in FLAGS.encoders.split(","):
    config = model_config(spec)
    model = models.build_model(config, NUM_CLASSES)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    total = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(variables["params"]))
    encoder = sum(int(np.prod(np.shape(x)))
                  for x in jax.tree.leaves(variables["params"]["encoder"]))
    flops = [summary.forward_flops(model, variables, (1,) + size + (3,)) / 1e9
             for size in sizes]
    print(f"| {spec} | {total:,} | {encoder:,} | " +
          " | ".join(f"{f:.2f}" for f in flops) + " |", flush=True)


if __name__ == "__main__":
  cli.run(main)
