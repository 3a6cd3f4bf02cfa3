"""Resumable (method x seed [x variant]) experiment grid: the paper's Table 1 and sweeps.

Each run trains in its own workdir ``ROOT/NAME`` (a ``python -m cowmix_jax.main``
subprocess; its log is ``ROOT/NAME/train.log``). As each run finishes its final teacher
mIoU, per-class IoU, wall time and teacher mIoU history (from ``ROOT/NAME/metrics.jsonl``)
go into ``ROOT/results.json``. ROOT is a local directory (the runs' logs are their
processes' output). Run the same command
again to continue: finished runs are skipped, an interrupted run resumes from its last
checkpoint. SIGTERM or Ctrl-C stops the current run cleanly (it checkpoints) and the
grid. At the end a table gives mean +- std (over seeds) per method and the fraction of
the supervised-to-all-labels gap each method closes.

Config overrides for every run are ``--config.KEY=VALUE``, as for training (``--set=KEY=VALUE``
is the same). Table 1 at CPU scale (docs/REPRODUCING.md, docs/RESULTS.md): each method
at the paper's length (Table 1's caption: 300 epochs; standard augmentation 50, CutMix
100; CowOut both 300 and, as appendix D.3.3 says, 100: ``cowout_100ep``), all scaled by
one factor (epochs as ``config.num_epochs`` counts them)::

  python -m cowmix_jax.experiments.ablation --config=configs/camvid_cpu.py \\
      --root=runs/camvid_lite0 --epoch_scale=0.04 --seeds=0,1,2,3,4 \\
      --config.data.manual_dir=/data/CamVid

Sweeps of one key at a time (the base value's runs are shared with the grid)::

  python -m cowmix_jax.experiments.ablation --config=configs/camvid_cpu.py \\
      --root=runs/camvid_lite0 --epoch_scale=0.04 --seeds=0 --methods=cowmix \\
      --vary="cons_weight=1;3;30" --config.data.manual_dir=/data/CamVid

Longer runs continue finished shorter ones instead of starting over (at a constant
learning rate nothing in a run depends on its planned length, so the continued run takes
the same steps as one planned that long)::

  python -m cowmix_jax.experiments.ablation --config=configs/camvid_cpu.py \\
      --root=runs/camvid_lite0_24ep --epoch_scale=0.08 --continue_from=runs/camvid_lite0 \\
      --methods=supervised,cowmix --seeds=0 --config.data.manual_dir=/data/CamVid

``--eval_splits=test`` scores each run's final teacher on the test split too when it ends
(recorded as test_miou, never used to choose anything); ``--code=DIR`` trains with a
frozen checkout of the code (a git worktree) while this tree changes; a second runner on
other methods may share the root and the results file (two runs at once).
Only print the table of what is recorded: add --report_only.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app, flags

from cowmix_jax import cli, config_base, method_keys, metrics_file
from cowmix_jax.checkpoints import LATEST as CHECKPOINTS

# Table 1's columns: a name -> the config overrides that make it.
METHODS: dict[str, dict[str, str]] = {
    "supervised": {"method": "supervised"},
    "aug": {"method": "aug"},
    "ict": {"method": "ict"},
    "cutout": {"method": "cutout"},
    "cutmix": {"method": "cutmix"},
    # CutMix as the paper's section 3.3 describes it: the box's area drawn as CutOut's,
    # U(0, 1) of the image, with its aspect ratio and position (masks.box_masks); the
    # "cutmix" column keeps the authors' later code's fixed half-image area.
    "cutmix_random_area": {"method": "cutmix", "mask.cutmix_p_range": "(0.0, 1.0)"},
    "cowout": {"method": "cowout"},
    "cowout_100ep": {"method": "cowout"},
    "cowmix": {"method": "cowmix"},
    "all_labels": {"method": "supervised", "data.num_labelled": "-1"},
    # Beyond the paper (issue 38): FixMatch and UniMatch V1 with UniMatch's CutMix boxes
    # or with cow masks (CowMix's sigma and p), and UniMatch with complementary cow masks.
    "fixmatch_box": {"method": "fixmatch", "mask.mix": "box"},
    "fixmatch_cow": {"method": "fixmatch", "mask.mix": "cow"},
    "unimatch_box": {"method": "unimatch", "mask.mix": "box"},
    "unimatch_cow": {"method": "unimatch", "mask.mix": "cow"},
    "unimatch_cow_complementary": {"method": "unimatch", "mask.mix": "cow",
                                   "mask.complementary": "True"},
    # Controls that hold the amount pasted fixed: cow masks with the boxes' areas (a view
    # shows its partner on 10% of its pixels on average, as with boxes, instead of 25%),
    # and independent cow masks always applied (50%, as complementary ones).
    "fixmatch_cow_box_area": {"method": "fixmatch", "mask.mix": "cow",
                              "mask.cowmix_p_range": "(0.02, 0.4)"},
    "unimatch_cow_box_area": {"method": "unimatch", "mask.mix": "cow",
                              "mask.cowmix_p_range": "(0.02, 0.4)"},
    "unimatch_cow_always": {"method": "unimatch", "mask.mix": "cow",
                            "mask.mix_probability": "1.0"},
}
# The columns run when --methods is not given: Table 1's (the strong-view columns above,
# about twice CowMix's step, are asked for by name).
TABLE_1_COLUMNS = tuple(name for name in METHODS
                        if METHODS[name]["method"] not in method_keys.STRONG_VIEW_METHODS)
BASELINE, FULL = "supervised", "all_labels"
# The runner's exit status when SIGTERM or Ctrl-C stopped it (as a process killed by
# SIGTERM reports it in a shell), so that a script looping over grids stops as well.
STOPPED_STATUS = 143
# Training length of each column in the paper's epochs (Table 1's caption; appendix
# D.3.3 gives CowOut 100 instead of 300, hence both).
PAPER_EPOCHS: dict[str, int] = {
    "supervised": 300, "aug": 50, "ict": 300, "cutout": 300, "cutmix": 100,
    "cutmix_random_area": 100, "cowout": 300, "cowout_100ep": 100, "cowmix": 300,
    "all_labels": 300,
    # Not in the paper: the baseline's length.
    "fixmatch_box": 300, "fixmatch_cow": 300, "unimatch_box": 300, "unimatch_cow": 300,
    "unimatch_cow_complementary": 300, "fixmatch_cow_box_area": 300,
    "unimatch_cow_box_area": 300, "unimatch_cow_always": 300}


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the grid."""

  method: str
  seed: int
  variant: tuple[tuple[str, str], ...] = ()  # (config key, value) pairs

  @property
  def group(self) -> str:
    """The table row: the method, and the variant's settings if any."""
    if not self.variant:
      return self.method
    return f"{self.method} [{', '.join(f'{k}={v}' for k, v in self.variant)}]"

  @property
  def name(self) -> str:
    """The run's directory name, e.g. ``cowmix_seed0`` or ``cowmix_cons_weight=3_seed0``."""
    parts = [self.method] + [f"{key}={slug(value)}" for key, value in self.variant]
    return "_".join(parts + [f"seed{self.seed}"])


def slug(value: str) -> str:
  """A value as a file-name-safe string: ``(0.5, 2.0)`` -> ``0.5-2.0``."""
  return re.sub(r"[^0-9A-Za-z.+-]+", "-", value).strip("-")


def parse_vary(text: str) -> tuple[str, list[str]]:
  """``"key=v1;v2;v3"`` -> ``("key", ["v1", "v2", "v3"])``."""
  key, sep, values = text.partition("=")
  values = [v.strip() for v in values.split(";") if v.strip()]
  if not sep or not key.strip() or not values:
    raise ValueError(f"--vary={text!r}: expected KEY=VALUE1;VALUE2;...")
  return key.strip(), values


def parse_set(text: str) -> tuple[str, str]:
  key, sep, value = text.partition("=")
  if not sep or not key.strip():
    raise ValueError(f"--set={text!r}: expected KEY=VALUE (a config key, e.g. "
                     f"data.manual_dir=/data/CamVid)")
  return key.strip(), value


def plan_runs(methods: Sequence[str], seeds: Sequence[int],
              varies: Sequence[tuple[str, list[str]]] = ()) -> list[Run]:
  """Every (method, seed) run, or with ``varies`` one variant run per value of each
  varied key (one key at a time, as in the paper's sweeps), seeds innermost last so a
  partly finished grid already has every method at the first seeds."""
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
  variants = [()] if not varies else [((key, value),) for key, values in varies
                                      for value in values]
  return [Run(method, seed, variant) for seed in seeds for variant in variants
          for method in methods]


# ---------------------------------------------------------------------------------------
# Results file


def load_results(path: str) -> dict:
  if not os.path.exists(path):
    return {"runs": {}}
  with open(path) as f:
    try:
      results = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path}: not a results file ({error}); move it away to start "
                       f"afresh") from error
  if not isinstance(results.get("runs"), dict):
    raise ValueError(f"{path}: expected a JSON object with a 'runs' object")
  return results


def save_results(path: str, results: dict) -> None:
  """Writes atomically: a crash mid-write never leaves a broken results file."""
  temporary = path + ".tmp"
  with open(temporary, "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  os.replace(temporary, path)


def save_run(path: str, name: str, record: dict) -> dict:
  """Writes one run's record into the results file as it is on disk now (so fields that
  other tools added meanwhile, such as ``precise_bn_miou``, survive); returns the file's
  new contents."""
  with open(path + ".lock", "w") as lock:
    # Two runners may share one results file (two runs at once on different methods):
    # each read-modify-write holds the lock, so neither loses the other's record.
    fcntl.flock(lock, fcntl.LOCK_EX)
    results = load_results(path)
    results.setdefault("machine", machine_description())
    previous = results["runs"].get(name, {})
    results["runs"][name] = {**{k: v for k, v in previous.items() if k not in record},
                             **record}
    save_results(path, results)
  return results


def wall_seconds_file(workdir: str) -> str:
  return os.path.join(workdir, "wall_seconds.json")


def _load_wall(workdir: str) -> dict[str, float]:
  """``{wall_seconds: finished attempts, unfinished_attempt_seconds: the last heartbeat
  of an attempt that has not ended (or was killed with its runner)}``."""
  path = wall_seconds_file(workdir)
  if not os.path.exists(path):
    return {"wall_seconds": 0.0, "unfinished_attempt_seconds": 0.0}
  try:
    with open(path) as f:
      data = json.load(f)
    return {"wall_seconds": float(data["wall_seconds"]),
            "unfinished_attempt_seconds": float(data.get("unfinished_attempt_seconds", 0.0))}
  except (ValueError, KeyError, TypeError) as error:
    raise SystemExit(f"{path}: unreadable wall-time record ({error}); expected "
                     '{"wall_seconds": <float>}') from error


def _save_wall(workdir: str, finished: float, unfinished: float = 0.0) -> None:
  data = {"wall_seconds": finished}
  if unfinished:
    data["unfinished_attempt_seconds"] = unfinished
  temporary = wall_seconds_file(workdir) + ".tmp"
  with open(temporary, "w") as f:
    json.dump(data, f)
  os.replace(temporary, wall_seconds_file(workdir))


def fold_unfinished_attempt(workdir: str) -> None:
  """Counts a killed attempt's last heartbeat as finished time, before a new attempt."""
  wall = _load_wall(workdir)
  if wall["unfinished_attempt_seconds"]:
    _save_wall(workdir, wall["wall_seconds"] + wall["unfinished_attempt_seconds"])


def record_heartbeat(workdir: str, seconds: float) -> None:
  """Records how long the running attempt has taken so far, so that the time survives
  the runner being killed (the end of a session kills it with everything else)."""
  _save_wall(workdir, _load_wall(workdir)["wall_seconds"], seconds)


def add_wall_seconds(workdir: str, seconds: float) -> float:
  """Adds one ended attempt's wall time to the run's total (attempts of a resumed run
  add up) and clears its heartbeat."""
  total = _load_wall(workdir)["wall_seconds"] + seconds
  _save_wall(workdir, total)
  return total


def read_wall_seconds(workdir: str) -> float:
  """The run's wall time: every finished attempt plus any unfinished one's heartbeat."""
  wall = _load_wall(workdir)
  return wall["wall_seconds"] + wall["unfinished_attempt_seconds"]


def teacher_history(workdir: str) -> dict[str, float]:
  """``{step: teacher mIoU (fraction)}`` of every evaluation in ``workdir/metrics.jsonl``
  (train.py writes it), in step order; a step evaluated again after a resume keeps its
  later value."""
  return {str(step): value
          for step, value in metrics_file.metric_history(workdir, "teacher_miou").items()}


def best_of_run(final: dict, history: dict[str, float]) -> dict:
  """``{"best_miou", "best_step"}``: the run's own record of its best teacher (train.py
  writes it), else the best of its logged evaluations (earliest on ties)."""
  if final.get("best_miou") is not None:
    return {"best_miou": final["best_miou"], "best_step": final["best_step"]}
  if not history:
    return {"best_miou": final["miou"], "best_step": final["step"]}
  step = max(history, key=lambda s: (history[s], -int(s)))
  return {"best_miou": history[step], "best_step": int(step)}


def run_record(run: Run, workdir: str) -> dict | None:
  """The results entry of a finished run (None if ``workdir`` has no results.json)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    final = json.load(f)
  return {
      "method": run.method, "seed": run.seed, "group": run.group,
      "variant": dict(run.variant), "miou": final["miou"],
      "student_miou": final.get("student_miou"),
      "per_class_iou": final["per_class_iou"], "step": final["step"],
      **best_of_run(final, teacher_history(workdir)),
      # The dataset's class order (the results file stores keys sorted).
      "class_names": list(final["per_class_iou"]),
      "split": final["split"], "train_seconds": final.get("train_seconds"),
      "wall_seconds": read_wall_seconds(workdir),
      "teacher_history": teacher_history(workdir),
      "finished": datetime.datetime.now().isoformat(timespec="seconds"),
      "environment": run_environment(),
  }


# ---------------------------------------------------------------------------------------
# Launching


def method_epochs(method: str, epoch_scale: float) -> float:
  """``PAPER_EPOCHS[method] x epoch_scale``: the run's ``config.num_epochs``."""
  return PAPER_EPOCHS[method] * epoch_scale


def python_module_command(module: str, code: str = "") -> list[str]:
  """``python -m MODULE`` in this interpreter; with ``code`` (a checkout of this
  repository), with that checkout's ``cowmix_jax`` package instead of this one
  (``PYTHONPATH=CODE``, and ``-P`` so that the working directory's package does not
  come first)."""
  if not code:
    return [sys.executable, "-m", module]
  return ["env", f"PYTHONPATH={os.path.abspath(code)}", sys.executable, "-P", "-m", module]


def train_command(run: Run, config: str, workdir: str, common: Sequence[tuple[str, str]],
                  epoch_scale: float = 0.0, code: str = "") -> list[str]:
  """The ``cowmix_jax.main`` command line of a run: the method, its length in epochs
  (with ``epoch_scale`` > 0), the seed, the common ``--set`` overrides, then the variant
  (later overrides win)."""
  length = ([("num_epochs", f"{method_epochs(run.method, epoch_scale):g}")]
            if epoch_scale > 0 else [])
  settings = (list(METHODS[run.method].items()) + length + [("seed", str(run.seed))]
              + list(common) + list(run.variant))
  return (python_module_command("cowmix_jax.main", code)
          + [f"--config={config}", f"--workdir={workdir}"]
          + [f"--config.{key}={value}" for key, value in settings])


def evaluation_file(workdir: str, split: str) -> str:
  return os.path.join(workdir, f"evaluation_{split}.json")


def evaluate_command(workdir: str, split: str, code: str = "") -> list[str]:
  """The ``cowmix_jax.evaluate`` command line that scores a run's final teacher (its
  latest checkpoint, with the run's saved config) on ``split``."""
  return (python_module_command("cowmix_jax.evaluate", code)
          + [f"--workdir={workdir}", "--checkpoint=latest", "--model=teacher",
             f"--split={split}", f"--output={evaluation_file(workdir, split)}"])


def split_fields(split: str, evaluation: dict) -> dict:
  """A record's fields for one more split: ``{SPLIT}_miou``, ``{SPLIT}_per_class_iou``."""
  return {f"{split}_miou": evaluation["miou"],
          f"{split}_per_class_iou": evaluation["per_class_iou"]}


def evaluate_splits(workdir: str, record: dict, splits: Sequence[str], stop: StopRequest,
                    launcher, code: str = "") -> tuple[dict, str]:
  """The fields of ``record``'s final teacher on each of ``splits`` that the record
  lacks (``split_fields``), evaluated with ``evaluate_command`` through ``launcher``;
  an evaluation already written to ``evaluation_file`` is read, not repeated. Returns
  the fields and why an evaluation failed ('' when none did)."""
  fields = {}
  for split in splits:
    if f"{split}_miou" in record:
      continue
    path = evaluation_file(workdir, split)
    if not os.path.exists(path):
      code_, _ = launcher(evaluate_command(workdir, split, code), workdir, stop)
      if code_ != 0 or not os.path.exists(path):
        return fields, f"evaluation on {split} failed (exit code {code_}); see {workdir}/train.log"
    with open(path) as f:
      evaluation = json.load(f)
    if evaluation["step"] != record["step"]:
      return fields, (f"{path} scores step {evaluation['step']}, not the run's final step "
                      f"{record['step']}; delete it to evaluate again")
    fields.update(split_fields(split, evaluation))
  return fields, ""


class StopRequest:
  """Set by SIGTERM/SIGINT; the signal is passed on to the running training process,
  which checkpoints and exits."""

  def __init__(self):
    self.requested = False
    self.child: subprocess.Popen | None = None

  def install(self) -> StopRequest:
    signal.signal(signal.SIGTERM, self._handle)
    signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True
    if self.child is not None and self.child.poll() is None:
      self.child.send_signal(signal.SIGTERM)


def launch(command: list[str], workdir: str, stop: StopRequest,
           heartbeat_seconds: float = 30.0) -> tuple[int, float]:
  """Runs one training process (output appended to ``workdir/train.log``); returns its
  exit code and wall seconds. Every ``heartbeat_seconds`` the attempt's time so far is
  written to ``wall_seconds.json`` (see ``record_heartbeat``)."""
  os.makedirs(workdir, exist_ok=True)
  fold_unfinished_attempt(workdir)
  start = time.time()
  with open(os.path.join(workdir, "train.log"), "a") as log:
    log.write(f"\n# {datetime.datetime.now().isoformat(timespec='seconds')}: "
              f"{' '.join(command)}\n")
    log.flush()
    stop.child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    while True:
      try:
        code = stop.child.wait(timeout=heartbeat_seconds)
        break
      except subprocess.TimeoutExpired:
        record_heartbeat(workdir, time.time() - start)
    stop.child = None
  return code, time.time() - start


def last_log_line(workdir: str) -> str:
  """The last non-empty line of the run's ``train.log`` (a failed run's one-line error);
  '' without a log."""
  try:
    with open(os.path.join(workdir, "train.log")) as log:
      lines = [line.strip() for line in log if line.strip()]
  except OSError:
    return ""
  return lines[-1] if lines else ""


def start_from_finished_run(source: str, workdir: str) -> str:
  """Makes ``workdir`` a copy of the finished run ``source`` (its checkpoints, logs and
  metrics; not its results.json), so that training there resumes from the source's last
  checkpoint. Returns why it cannot ('' when done), without copying anything then."""
  if not os.path.exists(os.path.join(source, "results.json")):
    return f"no finished run to continue in {source} (no results.json)"
  if not os.path.isdir(os.path.join(source, CHECKPOINTS)):
    return f"{source} has no {CHECKPOINTS}/ directory to resume from"
  partial = workdir + ".partial"  # renamed when complete: a copy cut short is redone
  shutil.rmtree(partial, ignore_errors=True)
  shutil.copytree(source, partial, ignore=shutil.ignore_patterns("results.json"))
  os.rename(partial, workdir)
  return ""


# ---------------------------------------------------------------------------------------
# The table


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, float("nan")
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def natural_key(text: str) -> list:
  """Sorts numbers inside strings by value: ``w=3`` before ``w=30``."""
  return [(0, float(part), "") if re.fullmatch(r"\d+(\.\d*)?", part) else (1, 0.0, part)
          for part in re.split(r"(\d+(?:\.\d*)?)", text) if part]


def miou_by_seed(records: Sequence[dict]) -> dict[int, float]:
  """``{seed: mIoU %}`` of one group's runs."""
  return {r["seed"]: 100 * r["miou"] for r in records}


def paired_gap_closed(members: Sequence[dict], baseline: Sequence[dict],
                      full: Sequence[dict]) -> float | None:
  """``mean(run - baseline) / mean(full - baseline)`` over the seeds all three ran (a
  seed fixes the labelled images, so runs are compared seed by seed); None without a
  common seed or when full supervision does not beat the baseline on average. With
  every seed present this equals the ratio of the differences of the means."""
  ours, base, top = miou_by_seed(members), miou_by_seed(baseline), miou_by_seed(full)
  seeds = sorted(set(ours) & set(base) & set(top))
  if not seeds:
    return None
  span = sum(top[s] - base[s] for s in seeds) / len(seeds)
  if span == 0:
    return None
  return sum(ours[s] - base[s] for s in seeds) / len(seeds) / span


def summarise(records: Sequence[dict]) -> list[dict]:
  """Rows ``{group, method, n, mean, std, gap_closed, seeds, wall_minutes}`` (mIoU in %,
  std over seeds with ddof 1), in Table 1's method order. ``gap_closed`` is
  ``paired_gap_closed`` against the base (not swept) supervised and all-labels runs
  (None where either is missing)."""
  groups: dict[str, list[dict]] = {}
  for record in records:
    groups.setdefault(record["group"], []).append(record)
  order = list(METHODS)
  keys = sorted(groups, key=lambda g: (order.index(groups[g][0]["method"]), natural_key(g)))
  rows = []
  for group in keys:
    members = sorted(groups[group], key=lambda r: r["seed"])
    mean, std = _mean_std([100 * r["miou"] for r in members])
    best_mean, best_std = _mean_std([100 * r.get("best_miou", r["miou"]) for r in members])
    gap = paired_gap_closed(members, groups.get(BASELINE, []), groups.get(FULL, []))
    rows.append({"group": group, "method": members[0]["method"], "n": len(members),
                 "mean": mean, "std": std, "best_mean": best_mean, "best_std": best_std,
                 "gap_closed": gap,
                 "seeds": [r["seed"] for r in members],
                 "wall_minutes": sum(r["wall_seconds"] for r in members) / len(members) / 60})
  return rows


def _plus_minus(std: float) -> str:
  return "" if math.isnan(std) else f" +- {std:.2f}"


def format_table(rows: Sequence[dict]) -> str:
  lines = ["| method | runs | final mIoU % (mean +- std) | best periodic mIoU % | "
           "gap closed (final) | wall min/run |", "|---|---|---|---|---|---|"]
  for row in rows:
    gap = "" if row["gap_closed"] is None else f"{100 * row['gap_closed']:.0f}%"
    lines.append(f"| {row['group']} | {row['n']} | {row['mean']:.2f}{_plus_minus(row['std'])} "
                 f"| {row['best_mean']:.2f}{_plus_minus(row['best_std'])} | {gap} | "
                 f"{row['wall_minutes']:.1f} |")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The grid


def grid_eta_text(to_come: Sequence[Run], results: dict) -> str:
  """', grid ETA N min' for the runs of ``to_come`` that have no record yet: for each, the
  mean wall time of the finished runs of its method in ``results`` (of all of them where
  its method has none; each a whole run over all its attempts, as its record keeps it);
  '' while no run has a recorded wall time."""
  finished = [r for r in results["runs"].values() if "wall_seconds" in r]
  if not finished:
    return ""
  def typical(records):
    return sum(r["wall_seconds"] for r in records) / len(records)
  seconds = sum(typical([r for r in finished if r.get("method") == run.method] or finished)
                for run in to_come if run.name not in results["runs"])
  return f", grid ETA {seconds / 60:.0f} min" if seconds else ""


def run_grid(runs: Sequence[Run], config: str, root: str, results_path: str,
             common: Sequence[tuple[str, str]], stop: StopRequest | None = None,
             launcher=launch, epoch_scale: float = 0.0,
             continue_from: str = "", eval_splits: Sequence[str] = (),
             code: str = "") -> tuple[dict, list[str]]:
  """Runs what is not finished, recording each run as it ends; returns the results and
  the names of failed runs. With ``continue_from`` (a root of finished shorter runs) a
  run whose workdir does not exist yet starts as a copy of ``continue_from/NAME``
  (``start_from_finished_run``) and resumes from there. Each run's final teacher is
  also scored on ``eval_splits`` (``evaluate_splits``; recorded runs that lack a
  split's score get it too). ``code``: train and evaluate with that checkout's package
  (``python_module_command``)."""
  stop = stop or StopRequest().install()
  defaults = mask_defaults(config)
  results = load_results(results_path)
  results.setdefault("machine", machine_description())
  failed = []
  for index, run in enumerate(runs, 1):
    workdir = os.path.join(root, run.name)
    prefix = f"[{index}/{len(runs)}] {run.name}"
    record = results["runs"].get(run.name)
    if record is not None:
      print(f"{prefix}: done before ({100 * record['miou']:.2f}%)")
      if not any(f"{split}_miou" not in record for split in eval_splits):
        continue
    else:
      record = run_record(run, workdir)
    if record is None and stop.requested:
      print(f"{prefix}: not started (stop requested); run the same command again.")
      break
    if record is None and continue_from and not os.path.exists(workdir):
      why_not = start_from_finished_run(os.path.join(continue_from, run.name), workdir)
      if why_not:
        print(f"{prefix}: FAILED: {why_not}", flush=True)
        failed.append(run.name)
        continue
      print(f"{prefix}: continues {os.path.join(continue_from, run.name)}", flush=True)
    if record is None:
      eta = grid_eta_text(runs[index - 1:], results)
      print(f"{prefix}: training (log {os.path.join(workdir, 'train.log')}{eta})", flush=True)
      command = train_command(run, config, workdir, overrides_read_by(run, common, defaults),
                              epoch_scale, code)
      code_, seconds = launcher(command, workdir, stop)
      add_wall_seconds(workdir, seconds)
      record = run_record(run, workdir) if code_ == 0 else None
      if record is None and stop.requested:
        print(f"{prefix}: stopped; run the same command again to resume it.")
        break
      if record is None:
        print(f"{prefix}: FAILED (exit code {code_}): {last_log_line(workdir)} (the log: "
              f"{workdir}/train.log)", flush=True)
        failed.append(run.name)
        continue
    fields, why_not = evaluate_splits(workdir, record, eval_splits, stop, launcher, code)
    record = {**record, **fields}
    results = save_run(results_path, run.name, record)
    scores = "".join(f", {split} {100 * record[f'{split}_miou']:.2f}%"
                     for split in eval_splits if f"{split}_miou" in record)
    print(f"{prefix}: teacher mIoU {100 * record['miou']:.2f}%{scores} "
          f"({record['wall_seconds'] / 60:.1f} min)", flush=True)
    if why_not:
      print(f"{prefix}: FAILED: {why_not}", flush=True)
      failed.append(run.name)
    if stop.requested:
      print("Stopped; run the same command again to continue the grid.")
      break
  return results, failed


def check_continuable(config: str, common: Sequence[tuple[str, str]],
                      continue_from: str) -> None:
  """UsageError unless ``continue_from`` is a directory and the runs' learning rate is
  constant: a continued run must have taken the same steps as a run planned at the new
  length from the start, and a decaying schedule depends on that length."""
  if not os.path.isdir(continue_from):
    raise app.UsageError(f"--continue_from={continue_from}: no such directory")
  schedule = dict(common).get("lr_schedule",
                              config_base.load_config_file(config).lr_schedule)
  if schedule != "constant":
    raise app.UsageError(
        f"--continue_from: config.lr_schedule is {schedule!r}, which depends on the run's "
        f"length, so a continued run would differ from one planned at this length; "
        f"continuing needs lr_schedule='constant'")


def config_keys(config) -> list[str]:
  """Every key of a config, flattened with dots (``mask.cow_sigma_range``)."""
  keys = []
  for key, value in config.items():
    keys.append(key)
    if hasattr(value, "items"):
      keys += [f"{key}.{child}" for child in config_keys(value)]
  return keys


def check_override_keys(config: str, overrides: Sequence[str]) -> None:
  """UsageError naming the first of ``overrides`` (config keys of ``--config.KEY=...``,
  ``--set`` and ``--vary``) that ``config`` lacks, with the closest keys it has: a
  misspelt key would otherwise fail every run of the grid in turn, after each had
  started."""
  known = set(config_keys(config_base.load_config_file(config)))
  for key in overrides:
    if key not in known:
      close = difflib.get_close_matches(key, sorted(known), n=3)
      hint = f"; did you mean {', '.join(close)}?" if close else ""
      raise app.UsageError(f"--config.{key}: {config} has no key {key!r}{hint}")


def mask_defaults(config: str) -> dict[str, str]:
  """The config file's ``mask.mix`` and ``mask.complementary`` (as the runner's text
  values), which decide what a strong-view method reads; the base config's where the
  file cannot be loaded here (another checkout's, with ``--code``)."""
  try:
    mask = config_base.load_config_file(config).mask
  except Exception:  # noqa: BLE001 (any failure: fall back to the base config's values)
    mask = config_base.get_base_config().mask
  return {"mask.mix": str(mask.mix), "mask.complementary": str(mask.complementary)}


def run_reads(run: Run, key: str, common: Sequence[tuple[str, str]],
              defaults: dict[str, str]) -> bool:
  """Whether ``run``'s method reads ``key`` (``method_keys.reads_key``), with the method,
  ``mask.mix`` and ``mask.complementary`` its column, the ``--set`` overrides and its
  variant give, else ``defaults``."""
  settings = {**defaults, **METHODS[run.method], **dict(common), **dict(run.variant)}
  complementary = settings["mask.complementary"].strip().lower() in ("true", "1")
  return method_keys.reads_key(key, settings["method"], settings["mask.mix"], complementary)


def overrides_read_by(run: Run, common: Sequence[tuple[str, str]],
                      defaults: dict[str, str]) -> list[tuple[str, str]]:
  """The ``--set`` overrides ``run``'s method reads: the others are left out of its
  command, where they would change nothing (and ``cowmix_jax.main`` refuses them)."""
  return [(key, value) for key, value in common if run_reads(run, key, common, defaults)]


def check_overrides_read(runs: Sequence[Run], common: Sequence[tuple[str, str]],
                         defaults: dict[str, str]) -> list[str]:
  """UsageError for a ``--vary`` key its run's method does not read, or a ``--set`` key
  no run reads (each would train runs that differ in nothing); returns one note per
  ``--set`` key left out of some runs."""
  for run in runs:
    for key, _ in run.variant:
      if not run_reads(run, key, common, defaults):
        raise app.UsageError(f"--vary={key}: {run.method} does not read it (read by "
                             f"{method_keys.readers_text(key)})")
  notes = []
  for key, _ in common:
    skipped = sorted({run.method for run in runs if not run_reads(run, key, common, defaults)})
    if runs and len(skipped) == len({run.method for run in runs}):
      raise app.UsageError(f"--set={key}: no method of the grid reads it (read by "
                           f"{method_keys.readers_text(key)})")
    if skipped:
      notes.append(f"--set={key} is left out of the runs of {', '.join(skipped)}, which "
                   f"do not read it")
  return notes


def check_code(code: str) -> None:
  """UsageError unless ``code`` is '' or a checkout holding ``cowmix_jax/main.py``, on a
  Python that has ``-P``."""
  if not code:
    return
  if not os.path.isfile(os.path.join(code, "cowmix_jax", "main.py")):
    raise app.UsageError(f"--code={code}: not a checkout of this repository (no "
                         f"cowmix_jax/main.py there)")
  if sys.version_info < (3, 11):
    raise app.UsageError("--code needs Python >= 3.11 (python -P)")


def machine_description() -> str:
  return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's model name as the kernel reports it (``platform.processor()`` where
  there is no ``cpuinfo``, as on macOS)."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          return value.strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def package_version(name: str) -> str:
  """The installed version of ``name`` ('' when it is not installed), read from its
  metadata so that the runner never imports JAX."""
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return ""


def run_environment() -> dict[str, str]:
  """What decides whether a run repeats bit for bit elsewhere, as far as the runner can
  see it: ``{cpu, cpu_cores, jax, jaxlib, allocator}`` (the allocator is
  ``LD_PRELOAD``; measured not to change a run, recorded to show it)."""
  return {"cpu": cpu_model(), "cpu_cores": str(os.cpu_count()),
          "jax": package_version("jax"), "jaxlib": package_version("jaxlib"),
          "allocator": os.environ.get("LD_PRELOAD", "")}


FLAGS = cli.new_flags()
flags.DEFINE_string("config", None, "a config file (configs/*.py)", flag_values=FLAGS)
flags.DEFINE_string("root", None, "directory of the runs' workdirs", flag_values=FLAGS)
flags.DEFINE_string("results", "", "results JSON (default ROOT/results.json)",
                    flag_values=FLAGS)
flags.DEFINE_string("methods", ",".join(TABLE_1_COLUMNS),
                    f"comma-separated, from {','.join(METHODS)} (default: Table 1's)",
                    flag_values=FLAGS)
flags.DEFINE_string("seeds", "0,1,2", "comma-separated seeds", flag_values=FLAGS)
flags.DEFINE_multi_string("set", [], "KEY=VALUE: a config override for every run (the "
                          "same as --config.KEY=VALUE)",
                          flag_values=FLAGS)
flags.DEFINE_multi_string("vary", [], "KEY=V1;V2: sweep one config key over values (one key "
                          "at a time)", flag_values=FLAGS)
flags.DEFINE_float("epoch_scale", 0.0, "> 0: train each method for its paper length in "
                   "epochs times this factor (config.num_epochs); 0: the config's length",
                   flag_values=FLAGS)
flags.DEFINE_string("continue_from", "", "ROOT of finished shorter runs of the same grid: "
                    "each run not started yet here begins as a copy of ROOT/NAME and "
                    "resumes from its last checkpoint to this grid's length (a constant "
                    "learning rate only)", flag_values=FLAGS)
flags.DEFINE_list("eval_splits", [], "comma-separated splits (e.g. test) on which each "
                  "run's final teacher is also scored when it ends (recorded as SPLIT_miou; "
                  "never used to choose anything)", flag_values=FLAGS)
flags.DEFINE_string("code", "", "a checkout of this repository (e.g. a git worktree at a "
                    "fixed commit) whose cowmix_jax package the runs train and evaluate "
                    "with, so that a long grid keeps one version of the code while this one "
                    "changes (needs Python >= 3.11); default: this package",
                    flag_values=FLAGS)
flags.DEFINE_boolean("report_only", False, "print the table of what is recorded, run nothing",
                     flag_values=FLAGS)
for _name in ("config", "root"):
  flags.mark_flag_as_required(_name, flag_values=FLAGS)


def config_overrides_as_set(argv: Sequence[str]) -> list[str]:
  """``--config.KEY=VALUE`` (training's spelling of an override) as ``--set=KEY=VALUE``."""
  return [f"--set={arg[len('--config.'):]}" if arg.startswith("--config.") else arg
          for arg in argv]


def main(argv: Sequence[str] | None = None) -> int:
  cli.parse(FLAGS, config_overrides_as_set(sys.argv[1:] if argv is None else argv),
            __doc__)

  if not os.path.exists(FLAGS.config):
    raise app.UsageError(f"--config={FLAGS.config}: no such file")
  try:
    seeds = [int(s) for s in FLAGS.seeds.split(",") if s.strip()]
  except ValueError:
    raise app.UsageError(f"--seeds={FLAGS.seeds!r}: expected comma-separated integers") from None
  try:
    runs = plan_runs([m.strip() for m in FLAGS.methods.split(",") if m.strip()], seeds,
                     [parse_vary(v) for v in FLAGS.vary])
    common = [parse_set(s) for s in FLAGS.set]
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  if not FLAGS.report_only and not FLAGS.code:  # another checkout's runs check their keys
    check_override_keys(FLAGS.config, [key for key, _ in common]
                        + [key for run in runs for key, _ in run.variant])
  results_path = FLAGS.results or os.path.join(FLAGS.root, "results.json")
  failed, stopped = [], False
  if FLAGS.report_only:
    if not os.path.isfile(results_path):
      raise app.UsageError(f"--report_only: there is no {results_path} (no run of this "
                           f"grid has finished)")
    results = load_results(results_path)
  else:
    os.makedirs(FLAGS.root, exist_ok=True)
    if FLAGS.epoch_scale < 0:
      raise app.UsageError(f"--epoch_scale={FLAGS.epoch_scale} must be >= 0")
    if FLAGS.continue_from:
      check_continuable(FLAGS.config, common, FLAGS.continue_from)
    check_code(FLAGS.code)
    for note in check_overrides_read(runs, common, mask_defaults(FLAGS.config)):
      print(note)
    stop = StopRequest().install()
    results, failed = run_grid(runs, FLAGS.config, FLAGS.root, results_path, common, stop,
                               launch, epoch_scale=FLAGS.epoch_scale,
                               continue_from=FLAGS.continue_from,
                               eval_splits=FLAGS.eval_splits, code=FLAGS.code)
    stopped = stop.requested
  print(f"\nEvery run recorded in {results_path} ({results.get('machine', '')}):")
  print(format_table(summarise(list(results["runs"].values()))))
  if failed:
    print(f"Failed runs: {', '.join(failed)}")
    return 1
  # A grid stopped by a signal is not done: a script that loops over grids stops too.
  return STOPPED_STATUS if stopped else 0


if __name__ == "__main__":
  cli.run(main)
