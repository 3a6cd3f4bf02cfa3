"""How much of a run's training loss is the consistency term? The logged loss terms of
each run, averaged over equal windows of its steps.

python -m cowmix_jax.experiments.loss_terms runs/camvid_lite0/cowmix_seed3 \\
    runs/camvid_lite0/cowout_seed3 [--windows=4]

Reads each workdir's metrics.jsonl and config.json (no checkpoint, no data). For each
window of the run's logged steps it prints the mean supervised loss, the consistency
term as it enters the loss (``cons_weight`` x the logged consistency loss, which already
carries the confidence weight; for fixmatch and unimatch the logged term is already the
weighted sum of the unlabelled losses, and the loss is half of it plus half the
supervised one, so the shares compare alike), the mean confidence weight (there: the
share of pixels whose pseudo-label passes the threshold), and the consistency term's
share of the loss. Used in docs/RESULTS.md to compare CowMix's pull toward the teacher
with the other perturbations'.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import app, flags

from cowmix_jax import checkpoints, cli, metrics_file, mixing

TERMS = ("supervised_loss", "consistency_loss", "confidence")


def window_means(by_step: dict[int, dict[str, float]], names: Sequence[str],
                 windows: int) -> list[dict]:
  """The mean of each of ``names`` over ``windows`` equal spans of steps.

  Args:
    by_step: ``{step: {name: value}}`` (``metrics_file.read_metrics``).
    names: the logged scalars to average; steps that lack all of them are ignored.
    windows: how many spans split ``(0, last step]``; a step ``s`` falls in window
      ``ceil(s * windows / last) - 1``.

  Returns:
    one ``{"first": step, "last": step, name: mean, ...}`` per window that has steps.
  """
  steps = [s for s, values in by_step.items() if all(n in values for n in names)]
  if not steps:
    return []
  last = max(steps)
  rows = []
  for k in range(windows):
    members = [s for s in steps if k * last < s * windows <= (k + 1) * last]
    if not members:
      continue
    row = {"first": min(members), "last": max(members)}
    row.update({n: float(np.mean([by_step[s][n] for s in members])) for n in names})
    rows.append(row)
  return rows


def loss_terms(workdir: str, windows: int) -> list[dict]:
  """``window_means`` of the loss terms of one run, with ``weighted_consistency``
  (``cons_weight`` x the consistency loss) and ``consistency_share`` (its share of the
  supervised plus weighted consistency loss) added."""
  try:
    config = checkpoints.load_config(workdir)
  except (FileNotFoundError, ValueError) as error:
    raise SystemExit(str(error)) from None
  # Strong-view methods (fixmatch, unimatch) log their unlabelled losses weighted.
  strong_views = isinstance(mixing.make_perturbation(config), mixing.StrongViews)
  cons_weight = 1.0 if strong_views else float(config.cons_weight)
  rows = window_means(metrics_file.read_metrics(workdir), TERMS, windows)
  if not rows:
    raise SystemExit(f"{workdir}: its metrics.jsonl has no steps logging {', '.join(TERMS)}")
  for row in rows:
    row["weighted_consistency"] = cons_weight * row["consistency_loss"]
    total = row["supervised_loss"] + row["weighted_consistency"]
    row["consistency_share"] = row["weighted_consistency"] / total if total else float("nan")
  return rows


def format_rows(name: str, rows: Sequence[dict]) -> str:
  """A Markdown table of one run's windows."""
  lines = [f"{name}:", "| steps | supervised | cons_weight x consistency | confidence | "
           "consistency share |", "|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['first']}-{row['last']} | {row['supervised_loss']:.3f} | "
                 f"{row['weighted_consistency']:.3f} | {row['confidence']:.3f} | "
                 f"{100 * row['consistency_share']:.0f}% |")
  return "\n".join(lines)


FLAGS = cli.new_flags()
flags.DEFINE_integer("windows", 4, "how many equal spans of steps to average over",
                     lower_bound=1, flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> None:
  workdirs = cli.parse(FLAGS, argv, __doc__)  # the training workdirs
  if not workdirs:
    raise app.UsageError("give one or more training workdirs")
  for workdir in workdirs:
    print(format_rows(workdir, loss_terms(workdir, FLAGS.windows)) + "\n")


if __name__ == "__main__":
  cli.run(main)
