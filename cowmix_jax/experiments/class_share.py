"""Which classes does a trained model predict? Share of the scored pixels per class, in
the labels and in each run's predictions (the final teacher), on one split.

python -m cowmix_jax.experiments.class_share runs/camvid_cpu/supervised_seed0 \\
    runs/camvid_cpu/cowmix_seed0 [--data_dir=DIR] [--split=validation]

Reads each workdir's config.json, evaluates its latest checkpoint and prints one column
per run next to the labels' own share, plus each run's mIoU. Used in docs/RESULTS.md
to show which classes CowMix stops predicting at CPU scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import app, flags

from cowmix_jax import checkpoints, cli, evaluate, metrics


def load_run_config(workdir: str, data_dir: str | None) -> ml_collections.ConfigDict:
  """The run's saved config, with ``data_dir`` (if given) in place of its own."""
  try:
    config = checkpoints.load_config(workdir)
  except (FileNotFoundError, ValueError) as error:
    raise SystemExit(str(error)) from None
  if data_dir:
    config.data.data_dir = data_dir
  return config


def format_shares(class_names: Sequence[str], columns: dict[str, np.ndarray]) -> str:
  """A plain-text table: one row per class, one column (percent) per entry."""
  width = max(len(name) for name in class_names)
  header = " ".join(f"{name[-22:]:>22}" for name in columns)
  lines = [f"{'class':<{width}} {header}"]
  for i, name in enumerate(class_names):
    lines.append(f"{name:<{width}} " + " ".join(f"{100 * v[i]:22.2f}" for v in columns.values()))
  return "\n".join(lines)


FLAGS = cli.new_flags()
flags.DEFINE_string("data_dir", "", "override config.data.data_dir", flag_values=FLAGS)
flags.DEFINE_string("split", None, "default: the config's eval split", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> None:
  workdirs = cli.parse(FLAGS, argv, __doc__)  # the training workdirs
  if not workdirs:
    raise app.UsageError("give one or more training workdirs")
  columns: dict[str, np.ndarray] = {}
  for workdir in workdirs:
    config = load_run_config(workdir, FLAGS.data_dir)
    result = evaluate.evaluate_checkpoint(config, workdir, split=FLAGS.split)
    true_share, predicted_share = metrics.class_shares(result["confusion"])
    columns.setdefault("labels", true_share)
    name = os.path.basename(os.path.normpath(workdir))
    columns[name] = predicted_share
    print(f"{name}: mIoU {100 * result['miou']:.2f}")
  print(format_shares(list(result["per_class_iou"]), columns))


if __name__ == "__main__":
  cli.run(main)
