"""Charts of an ablation results file (cowmix_jax/experiments/ablation.py): Table 1 bars, per-class
IoU, and one panel per swept config key (the paper's figures 10-12).

python -m cowmix_jax.experiments.plot_ablation --results=runs/camvid_cpu/results.json \\
    --output_dir=docs \\
    [--results=runs/camvid_cpu_sweep/results.json] [--prefix=camvid_cpu]
Writes PREFIX_miou.png, PREFIX_per_class.png and, when the file has sweep runs,
PREFIX_sweep.png, and prints Table 1 as Markdown (see ``table_markdown``) with the
verdicts on its claims (``targets_markdown``), and the same on test for the runs the
runner also scored there (--eval_splits=test), with a one-screen summary of those runs on
both splits (``summary_markdown``); --update_markdown=FILE writes them, the table over
the learned classes and the per-class table into FILE's marked blocks (summary, table1,
targets, table1_test, targets_test, table1_learned, per_class; with --common_results
also table1_lengths, ranking_common and their _test twins; with FixMatch or UniMatch
columns strong_views and strong_views_test; --markers=PREFIX for
several grids in one file). A diagnosis grid of single changes (the runner's --vary):
--variants gives each variant its own table row, paired with the baseline by seed, and
--nopaper leaves out the paper's column (its numbers describe other lengths).
Needs matplotlib (pip install -e ".[plots]").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from cowmix_jax import cli, plotting
from cowmix_jax.experiments import ablation, paired_stats

# Paper Table 1 (CamVid test, U-Net ResNet-50, 10 runs): mean, std.
PAPER_TABLE_1 = {
    "supervised": (48.66, 1.80), "aug": (46.24, 2.21), "ict": (48.29, 2.01),
    "cutout": (53.09, 2.56), "cutmix": (50.95, 2.49), "cowout": (52.93, 1.35),
    "cowmix": (55.06, 1.74), "all_labels": (64.19, 0.41),
}
PER_CLASS_METHODS = ("supervised", "cowmix", "all_labels")


def base_records(results: dict) -> list[dict]:
  return [r for r in results["runs"].values() if not r.get("variant")]


def plot_miou(plt, records: Sequence[dict], path: str, title: str) -> None:
  """Bars of mean mIoU per method with +-std error bars and each seed as a dot, next to
  the paper's Table 1 values."""
  rows = ablation.summarise(records)
  x = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(9, 4.5))
  ax.bar(x - 0.2, [r["mean"] for r in rows], 0.4, yerr=[np.nan_to_num(r["std"]) for r in rows],
         capsize=4, color="tab:blue", label="this code (CPU scale, CamVid val)")
  for i, row in enumerate(rows):
    values = [100 * rec["miou"] for rec in records if rec["group"] == row["group"]]
    ax.scatter(np.full(len(values), i - 0.2), values, color="black", s=10, zorder=3)
  paper = [PAPER_TABLE_1.get(r["method"], (np.nan, np.nan)) for r in rows]
  ax.bar(x + 0.2, [p[0] for p in paper], 0.4, yerr=[p[1] for p in paper], capsize=4,
         color="tab:gray", alpha=0.6, label="paper Table 1 (full scale, CamVid test)")
  ax.set_xticks(x, [r["group"] for r in rows], rotation=20)
  ax.set_ylabel("mIoU %")
  ax.set_title(title)
  ax.legend(loc="upper left")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def class_order(records: Sequence[dict]) -> list[str]:
  """The dataset's class order, from the first record that kept it (older records only
  have the per-class dictionary, whose keys the results file stores sorted)."""
  for record in records:
    if record.get("class_names"):
      return list(record["class_names"])
  return list(records[0]["per_class_iou"])


def common_seed_records(records: Sequence[dict], methods: Sequence[str]) -> list[dict]:
  """The base runs of ``methods`` restricted to the seeds every one of them ran, so that
  per-class means compare the same labelled subsets."""
  runs = [r for r in records if r["method"] in methods and r["group"] == r["method"]]
  seeds = set.intersection(*[{r["seed"] for r in runs if r["method"] == m} for m in methods])
  return [r for r in runs if r["seed"] in seeds]


def plot_per_class(plt, records: Sequence[dict], path: str, title: str) -> None:
  """Per-class IoU (mean over the seeds all three ran, +-std) of the baseline, CowMix
  and all labels."""
  methods = [m for m in PER_CLASS_METHODS if any(r["method"] == m for r in records)]
  if not methods:
    return
  records = common_seed_records(records, methods)
  classes = class_order(records)
  x = np.arange(len(classes))
  width = 0.8 / len(methods)
  fig, ax = plt.subplots(figsize=(10, 4.5))
  for k, method in enumerate(methods):
    per_seed = np.array([[100 * r["per_class_iou"][c] for c in classes]
                         for r in records if r["method"] == method])
    ax.bar(x + (k - (len(methods) - 1) / 2) * width, per_seed.mean(0), width,
           yerr=per_seed.std(0, ddof=1) if len(per_seed) > 1 else None, capsize=2,
           label=f"{method} ({len(per_seed)} seed{'s' if len(per_seed) != 1 else ''})")
  ax.set_xticks(x, classes, rotation=30)
  ax.set_ylabel("IoU %")
  ax.set_title(title)
  ax.legend()
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def sweep_groups(results: dict) -> dict[str, dict[str, list[dict]]]:
  """``{config key: {value: records}}`` of the sweep runs."""
  sweeps: dict[str, dict[str, list[dict]]] = {}
  for record in results["runs"].values():
    for key, value in (record.get("variant") or {}).items():
      sweeps.setdefault(key, {}).setdefault(value, []).append(record)
  return sweeps


# Bar colours of a sweep panel, as in the paper's figures 10-12.
SWEEP_COLOURS = {"baseline": "black", "value": "tab:blue", "base": "tab:orange",
                 "full": "tab:green"}


def sweep_panel(by_value: dict[str, list[dict]], base: Sequence[dict], key: str,
                base_values: dict[str, str], method: str = "cowmix") -> list:
  """The bars of one sweep panel: ``[(label, [mIoU %, one per seed], role)]``.

  As in the paper's figures 10-12: the supervised baseline first, then every swept value
  of ``key`` in numeric order (the base config's value taken from the grid's own
  ``method`` runs, role ``base``), and full supervision last. Only runs of the seeds the
  sweep used are counted, so every bar compares like with like.
  """
  swept = {v: [r for r in recs if r["method"] == method] for v, recs in by_value.items()}
  seeds = {r["seed"] for recs in swept.values() for r in recs}

  def same_seeds(group: str) -> list[dict]:
    return [r for r in base if r["method"] == group and r["seed"] in seeds]

  roles = {value: "value" for value in swept}
  if same_seeds(method) and key in base_values:
    label = base_values[key] + " (base)"
    swept[label], roles[label] = same_seeds(method), "base"
  def percent(runs: Sequence[dict]) -> list[float]:
    return [100 * r["miou"] for r in runs]

  bars = [(label, percent(swept[label]), roles[label])
          for label in sorted(swept, key=ablation.natural_key)]
  if same_seeds("supervised"):
    bars.insert(0, ("supervised", percent(same_seeds("supervised")), "baseline"))
  if same_seeds("all_labels"):
    bars.append(("all_labels", percent(same_seeds("all_labels")), "full"))
  return bars


def swept_method(by_value: dict[str, list[dict]]) -> str:
  """The method a sweep varies (its runs' method; ValueError when one key was swept on
  several methods, whose bars one panel cannot hold)."""
  methods = sorted({r["method"] for recs in by_value.values() for r in recs})
  if len(methods) != 1:
    raise ValueError(f"one swept key on several methods ({', '.join(methods)}): give "
                     "each method's sweep its own --results")
  return methods[0]


def plot_sweeps(plt, results: dict, path: str, base_values: dict[str, str]) -> bool:
  """One panel per swept key, of the method its runs vary (mean +- std over seeds, seeds
  as dots). False if nothing was swept."""
  sweeps = sweep_groups(results)
  if not sweeps:
    return False
  base = base_records(results)
  fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4), squeeze=False)
  for ax, (key, by_value) in zip(axes[0], sorted(sweeps.items())):
    method = swept_method(by_value)
    bars = sweep_panel(by_value, base, key, base_values, method)
    x = np.arange(len(bars))
    ax.bar(x, [np.mean(v) for _, v, _ in bars],
           yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for _, v, _ in bars], capsize=4,
           color=[SWEEP_COLOURS[role] for _, _, role in bars])
    for i, (_, v, _) in enumerate(bars):
      ax.scatter(np.full(len(v), i), v, color="gray", s=10, zorder=3)
    ax.set_xticks(x, [label for label, _, _ in bars], rotation=20)
    everything = [value for _, v, _ in bars for value in v]
    ax.set_ylim(min(everything) - 3, max(everything) + 2)
    ax.set_xlabel(key)
    seeds = sorted({r["seed"] for recs in by_value.values() for r in recs})
    ax.set_title(f"{method}, seeds {', '.join(map(str, seeds))}")
    ax.set_ylabel("teacher mIoU %")
    ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def paired_difference(records: Sequence[dict], group: str,
                      baseline: str = ablation.BASELINE) -> dict:
  """``group``'s mIoU minus ``baseline``'s, seed by seed (%), over the seeds both ran:
  ``paired_stats.compare``'s ``{n, seeds, mean, std, t_p, sign_flip_p, low, high}``.

  A seed fixes the labelled subset, which moves every method's mIoU together, so the
  per-seed difference is far less noisy than the difference of the two means.
  """
  ours = ablation.miou_by_seed([r for r in records if r["group"] == group])
  base = ablation.miou_by_seed([r for r in records if r["group"] == baseline])
  return paired_stats.compare(ours, base)


def gap_share(records: Sequence[dict], group: str) -> dict:
  """The share of the baseline-to-full gap that ``group`` closes, paired by seed, with
  its bootstrap interval: ``paired_stats.share_of_gap``'s ``{n, share, low, high}``."""
  by_group = {name: ablation.miou_by_seed([r for r in records if r["group"] == name])
              for name in (group, ablation.BASELINE, ablation.FULL)}
  return paired_stats.share_of_gap(by_group[group], by_group[ablation.BASELINE],
                                   by_group[ablation.FULL])


# A record's fields that describe its validation evaluations over every class (the
# teacher_history is cleared separately): dropped from derived records.
VALIDATION_ONLY_FIELDS = ("precise_bn_miou", "best_miou", "best_step")


def on_split(records: Sequence[dict], split: str) -> list[dict]:
  """Copies of the records that were also scored on ``split`` (``SPLIT_miou``, from
  the runner's --eval_splits) with that score and its per-class IoU as their ``miou``
  and ``per_class_iou``; their history, best periodic and precise-BN scores, which are
  validation numbers, are dropped."""
  copies = []
  for record in records:
    if f"{split}_miou" not in record:
      continue
    copy = dict(record, miou=record[f"{split}_miou"], teacher_history={},
                per_class_iou=record[f"{split}_per_class_iou"], split=split)
    for validation_number in VALIDATION_ONLY_FIELDS:
      copy.pop(validation_number, None)
    copies.append(copy)
  return copies


def difference_cell(difference: dict) -> str:
  """``+3.00 +- 1.41 [+2.00, +4.00]``: the mean paired difference, its std over seeds
  and its bootstrap 95% interval (the parts that exist; the interval from five seeds
  on, ``paired_stats.fewest_seeds``: over fewer it is little more than their range)."""
  if not difference["n"]:
    return ""
  text = _plus_minus(difference["mean"], difference["std"], signed=True)
  if not np.isnan(difference["low"]) and difference["n"] >= paired_stats.fewest_seeds():
    text += f" [{difference['low']:+.2f}, {difference['high']:+.2f}]"
  return text


def _percent(value: float) -> str:
  """``44%``; ``-inf%`` and ``inf%`` for an unbounded interval's ends."""
  return f"{value:.0%}" if np.isfinite(value) else ("-inf%" if value < 0 else "inf%")


def share_cell(share: dict) -> str:
  """``27% [7%, 45%]``: the share of the gap closed and its bootstrap 95% interval
  (from five seeds on, as in ``difference_cell``)."""
  if not share["n"] or np.isnan(share["share"]):
    return ""
  text = _percent(share["share"])
  if not np.isnan(share["low"]) and share["n"] >= paired_stats.fewest_seeds():
    text += f" [{_percent(share['low'])}, {_percent(share['high'])}]"
  return text


def share_claim_text(share: dict, target: float) -> str:
  """``27% [13%, 39%], t-based [8%, 44%], over 7 seeds: **open**``: the share of the
  gap with both its intervals and ``share_verdict``'s verdict on "at least
  ``target``"."""
  text = share_cell(share)
  if share["n"] >= paired_stats.fewest_seeds() and not np.isnan(share["t_low"]):
    text += f", t-based [{_percent(share['t_low'])}, {_percent(share['t_high'])}]"
  return f"{text} over {share['n']} seeds: **{share_verdict(share, target)}**"


def share_verdict(share: dict, target: float) -> str:
  """``paired_stats.verdict`` on "the share of the gap is at least ``target``", judged on
  both intervals: established when the bootstrap and the Fieller interval both lie at
  or above it, refuted when both lie below it (the percentile bootstrap alone is
  narrow over few seeds)."""
  low, high = share["low"], share["high"]
  if not np.isnan(share["t_low"]):
    low, high = min(low, share["t_low"]), max(high, share["t_high"])
  return paired_stats.verdict(low, high, target, n=share["n"])


LATE_EVALUATIONS = 3


def late_mean(record: dict, count: int = LATE_EVALUATIONS) -> float:
  """Mean teacher mIoU (%) of the run's last ``count`` evaluations (NaN without a
  history of at least ``count``). At a constant learning rate the teacher moves about a
  point between evaluations, so this is a steadier number than the final one."""
  steps = record.get("teacher_history") or {}
  # The results file stores keys sorted as text ("1000" before "500"): order by step.
  history = [steps[step] for step in sorted(steps, key=int)]
  if len(history) < count:
    return float("nan")
  return 100 * float(np.mean(history[-count:]))


def _plus_minus(mean: float, std: float, signed: bool = False) -> str:
  text = f"{mean:+.2f}" if signed else f"{mean:.2f}"
  return text if np.isnan(std) else f"{text} +- {std:.2f}"


def table_markdown(records: Sequence[dict], with_late: bool = True,
                   with_paper: bool = True) -> str:
  """Table 1 as Markdown: one row per method, one column per seed, mean +- std, the mean
  of each run's last evaluations (``late_mean``; ``with_late``), the mean mIoU with
  BatchNorm statistics recomputed on clean images (when some record has
  ``precise_bn_miou``, from cowmix_jax/experiments/recalibrate_bn.py), the paired per-seed
  difference from the baseline with its bootstrap 95% interval, its one-sided paired
  t-test and exact sign-flip p (two seeds or more), the share of the baseline-to-full
  gap closed with its interval, the paper's value (``with_paper``) and the mean wall
  time per run (paired_stats has the definitions)."""
  seeds = sorted({r["seed"] for r in records})
  with_precise = any("precise_bn_miou" in r for r in records)
  with_best = any(r.get("best_miou") is not None for r in records)
  with_p = len(seeds) > 1
  header = (["method"] + [f"seed {s}" for s in seeds] + ["mean +- std"] +
            (["best periodic, mean +- std"] if with_best else []) +
            ([f"last {LATE_EVALUATIONS} evals"] if with_late else []) +
            (["precise BN"] if with_precise else []) +
            ["minus baseline (paired) [95% CI]"] +
            (["p (one-sided paired t)", "p (sign flip)"] if with_p else []) +
            ["gap closed [95% CI]"] +
            (["paper (test)"] if with_paper else []) + ["wall min/run"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in ablation.summarise(records):
    members = [r for r in records if r["group"] == row["group"]]
    by_seed = ablation.miou_by_seed(members)
    difference = paired_difference(records, row["group"])
    cells = [row["group"]] + [f"{by_seed[s]:.2f}" if s in by_seed else "" for s in seeds]
    cells.append(_plus_minus(row["mean"], row["std"]))
    if with_best:
      cells.append(_plus_minus(row["best_mean"], row["best_std"]))
    if with_late:
      late = np.mean([late_mean(r) for r in members])
      cells.append("" if np.isnan(late) else f"{late:.2f}")
    if with_precise:
      precise = [100 * r["precise_bn_miou"] for r in members if "precise_bn_miou" in r]
      cells.append(f"{np.mean(precise):.2f}" if len(precise) == len(members) else "")
    is_baseline = row["method"] == ablation.BASELINE
    cells.append("" if is_baseline else difference_cell(difference))
    if with_p:
      for key in ("t_p", "sign_flip_p"):
        cells.append("" if is_baseline or np.isnan(difference[key])
                     else f"{difference[key]:.3f}")
    cells.append("0%" if is_baseline else share_cell(gap_share(records, row["group"])))
    if with_paper:
      paper = PAPER_TABLE_1.get(row["method"]) if row["group"] == row["method"] else None
      cells.append("" if paper is None else f"{paper[0]:.2f} +- {paper[1]:.2f}")
    cells.append(f"{row['wall_minutes']:.1f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def summary_markdown(records: Sequence[dict], split: str = "test") -> str:
  """Table 1 in one screen: the base methods' runs scored on both splits, on the seeds
  that every such method ran (so that each row's val and ``split`` numbers come from the
  same runs and the means subtract to the differences): per method, on val and on
  ``split`` the mean +- std and the paired difference from the baseline with its
  bootstrap 95% interval, the gap closed on each, and the paper's test score and its
  difference from the paper's baseline. '' without such runs."""
  scored = [r for r in records if f"{split}_miou" in r and r["group"] == r["method"]]
  seed_sets = [{r["seed"] for r in scored if r["group"] == g}
               for g in {r["group"] for r in scored}]
  shared = set.intersection(*seed_sets) if seed_sets else set()
  scored = [r for r in scored if r["seed"] in shared]
  if not scored:
    return ""
  on_other = on_split(scored, split)
  paper_base = PAPER_TABLE_1[ablation.BASELINE][0]
  lines = [f"| method | seeds | val mIoU | val minus baseline [95% CI] | {split} mIoU | "
           f"{split} minus baseline [95% CI] | gap closed, val / {split} | paper ({split}) "
           "| paper minus baseline |", "|" + "---|" * 9]
  for row in ablation.summarise(scored):
    group = row["group"]
    cells = [group, ", ".join(str(seed) for seed in row["seeds"])]
    for split_records in (scored, on_other):
      members = [r for r in split_records if r["group"] == group]
      cells.append(_mean_std_cell(members))
      cells.append("" if group == ablation.BASELINE
                   else difference_cell(paired_difference(split_records, group)))
    cells.append("0%" if group == ablation.BASELINE else
                 f"{share_cell(gap_share(scored, group))} / "
                 f"{share_cell(gap_share(on_other, group))}")
    paper = PAPER_TABLE_1.get(group)
    cells.append("" if paper is None else f"{paper[0]:.2f} +- {paper[1]:.2f}")
    cells.append("" if paper is None or group == ablation.BASELINE
                 else f"{paper[0] - paper_base:+.2f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def common_length_records(paper_records: Sequence[dict], common_records: Sequence[dict]
                          ) -> list[dict]:
  """Every column at the baseline's length: the records of ``common_records`` (shorter
  columns run, or continued, to that length) and, for the columns it lacks, those of
  ``paper_records`` whose paper length is the baseline's (CowOut's 300 epochs are CowOut
  at the common length; ``cowout_100ep``, CutMix and augmentation are not)."""
  full = ablation.PAPER_EPOCHS[ablation.BASELINE]
  rerun = {r["method"] for r in common_records}
  return [r for r in paper_records if ablation.PAPER_EPOCHS.get(r["method"]) == full
          and r["method"] not in rerun] + list(common_records)


def _mean_std_cell(members: Sequence[dict]) -> str:
  values = [100 * r["miou"] for r in members]
  if not values:
    return ""
  return _plus_minus(float(np.mean(values)),
                     float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"))


def lengths_markdown(paper_records: Sequence[dict], common_records: Sequence[dict],
                     epoch_scale: float) -> str:
  """Table 1 at two lengths, side by side: each column at its paper length times
  ``epoch_scale`` (Table 1's caption: augmentation 50 epochs, CutMix 100, the rest 300)
  and every column at the baseline's length (``common_length_records``), each with the
  mean +- std over seeds and the paired difference from the baseline with its 95%
  interval (the baseline is the same runs in both)."""
  common = common_length_records(paper_records, common_records)
  full_epochs = ablation.PAPER_EPOCHS[ablation.BASELINE] * epoch_scale
  header = ["method", f"paper's length x {epoch_scale:g}: epochs", "runs", "mean +- std",
            "minus baseline (paired) [95% CI]", f"common length ({full_epochs:g} epochs): runs",
            "mean +- std", "minus baseline (paired) [95% CI]"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  groups = {r["group"] for r in [*paper_records, *common]}
  for column in [m for m in ablation.METHODS if m in groups]:
    cells = [column]
    for records, epochs in ((paper_records, ablation.PAPER_EPOCHS[column] * epoch_scale),
                            (common, None)):
      members = [r for r in records if r["group"] == column]
      if epochs is not None:
        cells.append(f"{epochs:g}")
      baseline = column == ablation.BASELINE
      cells += [str(len(members)) if members else "", _mean_std_cell(members),
                "" if baseline or not members
                else difference_cell(paired_difference(records, column))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# Issue 35's targets: the paper's share of the gap for CowMix on CamVid (Table 1:
# (55.06 - 48.66) / (64.19 - 48.66)).
PAPER_GAP_SHARE = 0.41
PERTURBATIONS = ("aug", "ict", "cutout", "cutmix", "cutmix_random_area", "cowout",
                 "cowout_100ep")


def difference_verdict(difference: dict) -> str:
  """``paired_stats.verdict`` on "the paired difference is above 0": both one-sided
  p-values below 0.05 (and at least five seeds) establish it, both p-values of "below
  0" refute it."""
  return paired_stats.verdict(
      difference["low"], difference["high"], 0.0,
      [difference["t_p"], difference["sign_flip_p"]], n=difference["n"],
      p_values_below=[difference["t_p_below"], difference["sign_flip_p_below"]])


def targets_markdown(records: Sequence[dict], ours: str = "cowmix",
                     share_target: float = PAPER_GAP_SHARE) -> str:
  """The three claims of Table 1 about ``ours``, each with its numbers and a verdict
  (``paired_stats.verdict``: established, refuted or open), as a Markdown list:

  1. above the baseline: one-sided paired t p < 0.05 and sign-flip p < 0.05;
  2. closes at least ``share_target`` of the baseline-to-full gap: the bootstrap and
     the Fieller 95% intervals of the share both lie at or above it (refuted when both
     lie below; ``share_verdict``);
  3. its mean at least every other perturbation's (the base groups in
     ``PERTURBATIONS`` that share seeds with it): for each, the paired difference judged
     as in 1 (established when both p < 0.05, refuted when both p of "below 0" are);
     established when every one is, refuted when one is.
  """
  above = paired_difference(records, ours)
  share = gap_share(records, ours)
  lines = [
      f"1. {ours} above the baseline: {difference_cell(above)} over {above['n']} seeds, "
      f"t p {above['t_p']:.3f}, sign-flip p {above['sign_flip_p']:.3f}: **"
      + difference_verdict(above) + "**",
      f"2. {ours} closes >= {100 * share_target:.0f}% of the gap: "
      + share_claim_text(share, share_target)]
  lines.append(ranking_claim(records, ours, number=3))
  return "\n".join(lines)


def ranking_claim(records: Sequence[dict], ours: str = "cowmix", number: int = 3) -> str:
  """Table 1's third claim as one Markdown list item: ``ours``'s mean at least every
  other perturbation's (the groups of ``PERTURBATIONS`` that share two or more seeds
  with it), each paired difference judged as ``difference_verdict`` judges it;
  established when every one is, refuted when one is, open otherwise."""
  verdicts, parts = [], []
  groups = {r["group"] for r in records}
  for other in (g for g in PERTURBATIONS if g in groups):
    difference = paired_difference(records, ours, baseline=other)
    if difference["n"] < 2:
      continue
    verdicts.append(difference_verdict(difference))
    parts.append(f"{other} {difference_cell(difference)} ({difference['n']} seeds: "
                 f"{verdicts[-1]})")
  overall = ("refuted" if "refuted" in verdicts else
             "established" if verdicts and set(verdicts) == {"established"} else "open")
  return (f"{number}. {ours} at least every other perturbation (paired, {ours} minus): "
          + ("; ".join(parts) or "no other perturbation") + f": **{overall}**")


# Issue 38's columns, and the paired comparisons its claims rest on (ours, against).
STRONG_VIEW_COLUMNS = ("fixmatch_box", "fixmatch_cow", "unimatch_box", "unimatch_cow",
                       "unimatch_cow_complementary")
STRONG_VIEW_PAIRS = (("fixmatch_cow", "fixmatch_box"), ("unimatch_cow", "unimatch_box"),
                     ("unimatch_cow_complementary", "unimatch_cow"),
                     # The controls (ablation.METHODS): the same amount pasted.
                     ("fixmatch_cow_box_area", "fixmatch_box"),
                     ("unimatch_cow_box_area", "unimatch_box"),
                     ("unimatch_cow_complementary", "unimatch_cow_always"))
STRONG_VIEW_SHARE_TARGET = 0.5


def best_strong_view_column(records: Sequence[dict]) -> str | None:
  """The strong-view column with the largest share of the gap in ``records``, every
  column's share taken over the seeds all of them share (so that a column missing a
  seed is not ranked on easier or harder labelled subsets); choose it on validation
  records, then judge the same column on test. None without any."""
  groups = {r["group"] for r in records}
  columns = [g for g in STRONG_VIEW_COLUMNS if g in groups]
  shared = set.intersection(*({r["seed"] for r in records if r["group"] == g}
                              for g in columns)) if columns else set()
  on_shared = [r for r in records if r["seed"] in shared]
  shares = {g: gap_share(on_shared, g)["share"] for g in columns}
  shares = {g: v for g, v in shares.items() if not np.isnan(v)}
  return max(shares, key=shares.get) if shares else None


def strong_view_markdown(records: Sequence[dict], best: str | None = None,
                         share_target: float = STRONG_VIEW_SHARE_TARGET) -> str:
  """Issue 38's claims as a Markdown list, each with its numbers and a verdict: cow
  masks against boxes inside FixMatch and inside UniMatch, complementary cow masks
  against independent ones (paired by seed: t and sign-flip p, bootstrap interval), and
  whether ``best`` (default: the best share in ``records``, which then says that it
  was chosen on these runs) closes at least ``share_target`` of the gap
  (``share_verdict``). '' without such columns."""
  groups = {r["group"] for r in records}
  lines = []
  for ours, other in STRONG_VIEW_PAIRS:
    if ours not in groups or other not in groups:
      continue
    difference = paired_difference(records, ours, baseline=other)
    if difference["n"] < 2:
      continue
    lines.append(
        f"- {ours} minus {other}: {difference_cell(difference)} over {difference['n']} "
        f"seeds, t p {difference['t_p']:.3f}, sign-flip p {difference['sign_flip_p']:.3f}: **"
        + difference_verdict(difference) + "**")
  if not lines and not groups & set(STRONG_VIEW_COLUMNS):
    return ""
  chosen_here = best is None
  best = best or best_strong_view_column(records)
  if best is None:
    return "\n".join(lines)
  name = f"the best on val, {best}" + (" (chosen on these runs)" if chosen_here else "")
  share = gap_share(records, best)
  if share["n"]:
    lines.append(f"- {name}, closes >= {100 * share_target:.0f}% of the gap: "
                 + share_claim_text(share, share_target))
  else:
    lines.append(f"- {name}: no run here with the baseline and full supervision on the "
                 "same seed")
  return "\n".join(lines)


LEARNED_IOU = 0.10


def learned_classes(records: Sequence[dict], threshold: float = LEARNED_IOU) -> list[str]:
  """The classes that full supervision learns at this scale: mean IoU over the
  ``all_labels`` runs of at least ``threshold``, in the dataset's order (empty without
  ``all_labels`` runs)."""
  full = [r for r in records if r["method"] == ablation.FULL and r["group"] == ablation.FULL]
  if not full:
    return []
  return [c for c in class_order(records)
          if np.mean([r["per_class_iou"][c] for r in full]) >= threshold]


def restrict_to_classes(records: Sequence[dict], classes: Sequence[str]) -> list[dict]:
  """Copies of ``records`` whose ``miou`` is the mean IoU over ``classes`` only (their
  evaluation history, best periodic score and precise-BN mIoU, which cover every class,
  are dropped)."""
  restricted = []
  for record in records:
    copy = dict(record, miou=float(np.mean([record["per_class_iou"][c] for c in classes])),
                teacher_history={})
    for all_class_number in VALIDATION_ONLY_FIELDS:
      copy.pop(all_class_number, None)
    restricted.append(copy)
  return restricted


def per_class_markdown(records: Sequence[dict]) -> str:
  """Per-class IoU (%) as Markdown: one row per class in the dataset's order, one column
  per base method that ran every seed the baseline ran, each the mean over those seeds
  (the same labelled subsets for every column), and a last row with the mean over the
  classes (the mIoU). Methods with fewer seeds are named under the table. Empty without
  baseline runs."""
  runs = [r for r in records if r["group"] == r["method"]]
  seeds = {r["seed"] for r in runs if r["method"] == ablation.BASELINE}
  if not seeds:
    return ""
  order = [row["method"] for row in ablation.summarise(runs)]
  methods = [m for m in order if seeds <= {r["seed"] for r in runs if r["method"] == m}]
  left_out = [m for m in order if m not in methods]
  kept = common_seed_records(runs, methods)  # every one of them ran the baseline's seeds
  classes = class_order(kept)
  means = {m: {c: 100 * np.mean([r["per_class_iou"][c] for r in kept if r["method"] == m])
               for c in classes} for m in methods}
  lines = ["| class | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
  for name in classes:
    lines.append(f"| {name} | " + " | ".join(f"{means[m][name]:.1f}" for m in methods) + " |")
  lines.append("| mean (mIoU) | " + " | ".join(
      f"{np.mean(list(means[m].values())):.1f}" for m in methods) + " |")
  lines.append("")
  lines.append(f"Mean over seeds {', '.join(map(str, sorted(seeds)))}"
               + (f"; left out, for lacking some of these seeds: {', '.join(left_out)}."
                  if left_out else "."))
  return "\n".join(lines)


def markers(name: str) -> tuple[str, str]:
  """The start and end markers of the Markdown block ``name``."""
  return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_marked_block(text: str, name: str, content: str) -> str:
  """``text`` with the lines between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``
  replaced by ``content`` (the markers stay). Raises ValueError naming the missing
  marker."""
  start, end = markers(name)
  if start not in text or end not in text or text.index(start) > text.index(end):
    raise ValueError(f"expected the markers {start} ... {end} in that order")
  before, rest = text.split(start, 1)
  after = rest.split(end, 1)[1]
  return f"{before}{start}\n{content}\n{end}{after}"


def update_markdown(path: str, blocks: dict[str, str], required: Sequence[str] = ()) -> list[str]:
  """Writes each ``{name: text}`` into its marked block of the Markdown file ``path``.

  A block named in ``required`` must have its markers (SystemExit naming them
  otherwise); any other block without markers in the file is left out. Returns the
  names of the blocks written."""
  with open(path) as f:
    text = f.read()
  written = []
  for name, content in blocks.items():
    if name not in required and markers(name)[0] not in text:
      continue
    try:
      text = replace_marked_block(text, name, content)
    except ValueError as error:
      raise SystemExit(f"--update_markdown={path}: {error}") from error
    written.append(name)
  with open(path, "w") as f:
    f.write(text)
  return written


def merge_results(paths: Sequence[str], flag: str = "--results") -> dict:
  """The runs of several results files in one (a later file wins on a repeated name,
  and a line says which runs it replaced). UsageError naming ``flag`` for a file that
  does not exist; ValueError when the files hold no run at all (charts and tables of
  nothing would look like a finished report)."""
  merged = {"runs": {}}
  for path in paths:
    if not os.path.isfile(path):
      raise app.UsageError(f"{flag}={path}: no such file (a results.json of "
                           "cowmix_jax.experiments.ablation)")
    results = ablation.load_results(path)
    replaced = sorted(set(merged["runs"]) & set(results["runs"]))
    if replaced:
      print(f"{flag}={path} replaces {len(replaced)} run(s) of an earlier file: "
            + ", ".join(replaced))
    merged["runs"].update(results["runs"])
    merged.setdefault("machine", results.get("machine", ""))
  if not merged["runs"]:
    raise ValueError(f"{flag}: no run recorded in {', '.join(paths)}")
  return merged


# The base config's values of the keys the sweeps vary (--base adds more).
BASE_VALUES = ("cons_weight=10", "mask.cow_sigma_range=(1.0, 4.0)", "mask.ict_alpha=0.1",
               "confidence.mode=batch")
FLAGS = cli.new_flags()
flags.DEFINE_multi_string("results", None, "a results JSON of cowmix_jax.experiments.ablation "
                          "(repeat to merge the grid's and the sweeps' files)", flag_values=FLAGS)
flags.DEFINE_string("output_dir", "docs", "directory of the charts", flag_values=FLAGS)
flags.DEFINE_string("prefix", "camvid_cpu", "file name prefix of the charts", flag_values=FLAGS)
flags.DEFINE_string("title", "CamVid, 30 labels, CPU scale (val)", "chart title",
                    flag_values=FLAGS)
flags.DEFINE_multi_string("base", [], "KEY=VALUE: the base config's value of a swept key, "
                          f"besides {BASE_VALUES}", flag_values=FLAGS)
flags.DEFINE_string("update_markdown", "", "FILE: also write the tables between "
                    "<!-- table1:start --> and <!-- table1:end --> in FILE (e.g. "
                    "docs/RESULTS.md), and those of table1_learned and per_class where FILE "
                    "has their markers", flag_values=FLAGS)
flags.DEFINE_string("markers", "", "PREFIX: the marker names --update_markdown looks for "
                    "become PREFIXtable1, PREFIXtable1_learned and PREFIXper_class (several "
                    "grids' tables in one file)", flag_values=FLAGS)
flags.DEFINE_multi_string("common_results", [], "results JSON of the shorter columns run to "
                          "the baseline's length (e.g. --root=runs/camvid_lite0_common "
                          "--config.num_epochs=12): adds the table at both lengths",
                          flag_values=FLAGS)
flags.DEFINE_float("epoch_scale", 0.04, "the grid's --epoch_scale (labels the table at both "
                   "lengths)", flag_values=FLAGS)
flags.DEFINE_bool("variants", False, "also give each --vary variant its own row in the "
                  "tables, paired with the baseline on the seeds both ran (a diagnosis "
                  "grid's single changes); without it variants go to the sweep chart only",
                  flag_values=FLAGS)
flags.DEFINE_bool("paper", True, "the paper's Table 1 column (--nopaper for runs at another "
                  "length, whose rows the paper's numbers do not describe)", flag_values=FLAGS)
flags.mark_flag_as_required("results", flag_values=FLAGS)


def main(argv=None) -> None:
  cli.parse(FLAGS, argv, __doc__)
  plt = plotting.pyplot("plot_ablation")
  results = merge_results(FLAGS.results)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  records = list(results["runs"].values()) if FLAGS.variants else base_records(results)
  written = [os.path.join(FLAGS.output_dir, f"{FLAGS.prefix}_miou.png"),
             os.path.join(FLAGS.output_dir, f"{FLAGS.prefix}_per_class.png")]
  plot_miou(plt, records, written[0], FLAGS.title)
  plot_per_class(plt, records, written[1], FLAGS.title + ": per-class IoU")
  base_values = dict(ablation.parse_set(b) for b in [*BASE_VALUES, *FLAGS.base])
  sweep_path = os.path.join(FLAGS.output_dir, f"{FLAGS.prefix}_sweep.png")
  if plot_sweeps(plt, results, sweep_path, base_values):
    written.append(sweep_path)
  print("Wrote " + ", ".join(written))
  blocks = {"table1": table_markdown(records, with_paper=FLAGS.paper),
            "targets": targets_markdown(records)}
  print("\nTable 1 (final teacher mIoU % on validation):\n" + blocks["table1"])
  print("\nTable 1's claims:\n" + blocks["targets"])
  test_records = on_split(records, "test")
  if test_records:
    blocks["summary"] = summary_markdown(records)
    print("\nTable 1 in one screen (the runs scored on val and test, on the seeds every "
          "method ran):\n" + blocks["summary"])
    blocks["table1_test"] = table_markdown(test_records, with_late=False,
                                           with_paper=FLAGS.paper)
    blocks["targets_test"] = targets_markdown(test_records)
    print("\nTable 1 on test (the final teachers, for reporting only):\n"
          + blocks["table1_test"] + "\n\nTable 1's claims on test:\n" + blocks["targets_test"])
  strong_views = strong_view_markdown(records)
  if strong_views:
    best = best_strong_view_column(records)  # chosen on validation
    blocks["strong_views"] = strong_views
    print("\nFixMatch and UniMatch, boxes against cow masks:\n" + strong_views)
    if test_records and strong_view_markdown(test_records, best):
      blocks["strong_views_test"] = strong_view_markdown(test_records, best)
      print("\nThe same on test (the best column as chosen on validation):\n"
            + blocks["strong_views_test"])
  if FLAGS.common_results:
    common = base_records(merge_results(FLAGS.common_results, "--common_results"))
    blocks["table1_lengths"] = lengths_markdown(records, common, FLAGS.epoch_scale)
    blocks["ranking_common"] = ranking_claim(common_length_records(records, common))
    print("\nTable 1 at each method's paper length and at one common length:\n"
          + blocks["table1_lengths"] + "\n\nAt the common length:\n"
          + blocks["ranking_common"])
    if test_records:
      common_test = on_split(common, "test")
      blocks["table1_lengths_test"] = lengths_markdown(test_records, common_test,
                                                       FLAGS.epoch_scale)
      blocks["ranking_common_test"] = ranking_claim(
          common_length_records(test_records, common_test))
      print("\nThe same on test:\n" + blocks["table1_lengths_test"] + "\n\n"
            + blocks["ranking_common_test"])
  classes = learned_classes(records)
  if classes:
    blocks["table1_learned"] = table_markdown(restrict_to_classes(records, classes),
                                              with_late=False, with_paper=False)
    print(f"\nTable 1 over the {len(classes)} classes full supervision learns (IoU >= "
          f"{100 * LEARNED_IOU:.0f}%: {', '.join(classes)}):\n" + blocks["table1_learned"])
  per_class = per_class_markdown(records)
  if per_class:
    blocks["per_class"] = per_class
    print("\nPer-class teacher IoU (%):\n" + per_class)
  if FLAGS.update_markdown:
    named = {FLAGS.markers + name: text for name, text in blocks.items()}
    written = update_markdown(FLAGS.update_markdown, named, required=[FLAGS.markers + "table1"])
    print(f"Updated {', '.join(written)} in {FLAGS.update_markdown}")


if __name__ == "__main__":
  cli.run(main)
