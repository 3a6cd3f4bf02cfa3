"""Which classes does a trained model predict? Share of the scored pixels per class, in
the labels and in each run's predictions (the final teacher), on one split.

python -m cowmix_jax.experiments.class_share runs/camvid_cpu/supervised_seed0 \
    runs/camvid_cpu/cowmix_seed0 [--data_dir=DIR] [--split=validation]

Reads each workdir's config.json, evaluates its latest checkpoint and prints one column
per run next to the labels' own share, plus each run's mIoU. Used in docs/RESULTS.md
to show which classes CowMix stops predicting at CPU scale.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from cowmix_jax import checkpoints, evaluate, metrics


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


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+", help="training workdirs")
  parser.add_argument("--data_dir", default="", help="override config.data.data_dir")
  parser.add_argument("--split", default=None, help="default: the config's eval split")
  args = parser.parse_args(argv)
  columns: dict[str, np.ndarray] = {}
  for workdir in args.workdirs:
    config = load_run_config(workdir, args.data_dir)
    result = evaluate.evaluate_checkpoint(config, workdir, split=args.split)
    true_share, predicted_share = metrics.class_shares(result["confusion"])
    columns.setdefault("labels", true_share)
    name = os.path.basename(os.path.normpath(workdir))
    columns[name] = predicted_share
    print(f"{name}: mIoU {100 * result['miou']:.2f}")
  print(format_shares(list(result["per_class_iou"]), columns))


if __name__ == "__main__":
  main()
