"""Learning curves of ablation runs: the teacher's val mIoU at every evaluation, mean
over seeds per group (a method, or a method with its swept config values).

python -m cowmix_jax.experiments.plot_curves --results=docs/camvid_cpu_results.json \\
    --output=docs/camvid_cpu_curves.png [--results=MORE.json] [--groups=supervised,cowmix]
    [--seeds=0,1,2] [--title=...]
Each run's history comes from its record's ``teacher_history`` (cowmix_jax/experiments/ablation.py
reads it from the run's metrics.jsonl). A group's curve covers the steps all its selected seeds
evaluated; the shaded band is +-1 std over seeds. Needs matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from absl import flags

from cowmix_jax import cli, plotting
from cowmix_jax.experiments import ablation, plot_ablation


def history_arrays(record: dict) -> tuple[np.ndarray, np.ndarray]:
  """``(steps int [N], teacher mIoU % float [N])`` in step order. The results file
  stores the history's keys as text, which sorts "1000" before "500"."""
  history = record.get("teacher_history") or {}
  steps = np.array(sorted(int(step) for step in history), dtype=np.int64)
  miou = np.array([100 * history[str(step)] for step in steps], dtype=np.float64)
  return steps, miou


def mean_curve(records: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(steps [N], mean [N], std [N])`` over ``records`` at the steps every one of them
  evaluated (std with ddof 1; zeros for a single record)."""
  if not records:
    raise ValueError("mean_curve: no records")
  curves = [history_arrays(record) for record in records]
  steps = curves[0][0]
  for other_steps, _ in curves[1:]:
    steps = np.intersect1d(steps, other_steps)
  if steps.size == 0:
    names = ", ".join(f"{r['group']} seed {r['seed']}" for r in records)
    raise ValueError(f"mean_curve: {names} share no evaluated step (teacher_history)")
  values = np.stack([miou[np.searchsorted(run_steps, steps)] for run_steps, miou in curves])
  std = values.std(0, ddof=1) if len(values) > 1 else np.zeros(len(steps))
  return steps, values.mean(0), std


def select_records(results: dict, groups: Sequence[str] | None,
                   seeds: Sequence[int] | None) -> dict[str, list[dict]]:
  """``{group: records}`` with a history, restricted to ``groups`` (in that order; all
  groups in Table 1's order when None) and ``seeds`` (all when None)."""
  by_group: dict[str, list[dict]] = {}
  for record in results["runs"].values():
    if record.get("teacher_history") and (seeds is None or record["seed"] in seeds):
      by_group.setdefault(record["group"], []).append(record)
  if groups is None:
    methods = list(ablation.METHODS)
    order = sorted(by_group, key=lambda g: (methods.index(by_group[g][0]["method"]),
                                            ablation.natural_key(g)))
    return {group: by_group[group] for group in order}
  missing = [group for group in groups if group not in by_group]
  if missing:
    raise ValueError(f"--groups: no run with a teacher_history in group(s) {missing}; "
                     f"the results have {sorted(by_group)}")
  return {group: by_group[group] for group in groups}


def plot_curves(plt, curves: dict[str, list[dict]], path: str, title: str) -> None:
  """One line per group (mean over its seeds) with a +-std band."""
  fig, ax = plt.subplots(figsize=(8, 4.5))
  for group, records in curves.items():
    steps, mean, std = mean_curve(records)
    seeds = sorted(r["seed"] for r in records)
    line, = ax.plot(steps, mean, marker="o", markersize=3,
                    label=f"{group} (seed{'s' if len(seeds) > 1 else ''} "
                          f"{','.join(map(str, seeds))})")
    if len(records) > 1:
      ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.15)
  ax.set_xlabel("step")
  ax.set_ylabel("teacher val mIoU %")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


FLAGS = cli.new_flags()
flags.DEFINE_multi_string("results", None, "a results JSON of cowmix_jax.experiments.ablation "
                          "(repeat to merge)", flag_values=FLAGS)
flags.DEFINE_string("output", "docs/camvid_cpu_curves.png", "the chart to write", flag_values=FLAGS)
flags.DEFINE_string("groups", "", "comma-separated groups (run names without _seedN), in order",
                    flag_values=FLAGS)
flags.DEFINE_string("seeds", "", "comma-separated seeds (default: all)", flag_values=FLAGS)
flags.DEFINE_string("title", "CamVid, 30 labels, CPU scale: teacher val mIoU", "chart title",
                    flag_values=FLAGS)
flags.mark_flag_as_required("results", flag_values=FLAGS)


def main(argv=None) -> None:
  cli.parse(FLAGS, argv, __doc__)
  groups = [g.strip() for g in FLAGS.groups.split(",") if g.strip()] or None
  seeds = [int(s) for s in FLAGS.seeds.split(",") if s.strip()] or None
  curves = select_records(plot_ablation.merge_results(FLAGS.results), groups, seeds)
  if not curves:
    raise SystemExit(f"No run with a teacher_history in {FLAGS.results}")
  os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
  plot_curves(plotting.pyplot("plot_curves"), curves, FLAGS.output, FLAGS.title)
  for group, records in curves.items():
    steps, mean, _ = mean_curve(records)
    print(f"{group}: " + ", ".join(f"{s}: {m:.2f}" for s, m in zip(steps, mean)))
  print(f"Wrote {FLAGS.output}")


if __name__ == "__main__":
  cli.run(main)
