"""cowmix_jax/experiments/ablation.py: the resumable experiment grid and its table."""

import ast
import importlib.metadata
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from cowmix_jax import config_base
from cowmix_jax.experiments import ablation, paired_stats, plot_ablation, recalibrate_bn

from conftest import REPO, TINY_RUN

TINY = {key: value for key, value in TINY_RUN.items() if key != "confidence.mode"}
TINY.update({"num_train_steps": "3", "log_every": "1", "checkpoint_every": "0"})


def test_plan_names_every_method_seed_and_variant():
  runs = ablation.plan_runs(["supervised", "cowmix"], [0, 1],
                            [("cons_weight", ["3", "30"])])
  assert [r.name for r in runs[:4]] == [
      "supervised_cons_weight=3_seed0", "cowmix_cons_weight=3_seed0",
      "supervised_cons_weight=30_seed0", "cowmix_cons_weight=30_seed0"]
  assert len(runs) == 8 and {r.seed for r in runs[4:]} == {1}
  assert runs[1].group == "cowmix [cons_weight=3]"
  sigma = ablation.Run("cowmix", 2, (("mask.cow_sigma_range", "(0.5, 2.0)"),))
  assert sigma.name == "cowmix_mask.cow_sigma_range=0.5-2.0_seed2"
  with pytest.raises(ValueError, match="mixup"):
    ablation.plan_runs(["mixup"], [0])


def test_parse_vary_splits_values_and_rejects_bad_text():
  assert ablation.parse_vary("mask.cow_sigma_range=(1, 4);(2, 8)") == (
      "mask.cow_sigma_range", ["(1, 4)", "(2, 8)"])
  for bad in ("cons_weight", "=1;2", "cons_weight="):
    with pytest.raises(ValueError, match="KEY=VALUE1"):
      ablation.parse_vary(bad)


def test_command_applies_method_then_common_then_variant():
  run = ablation.Run("all_labels", 3, (("cons_weight", "30"),))
  command = ablation.train_command(run, "configs/x.py", "/w", [("cons_weight", "1"),
                                                               ("data.manual_dir", "/d")])
  flags = command[command.index("--workdir=/w") + 1:]
  assert flags == ["--config.method=supervised", "--config.data.num_labelled=-1",
                   "--config.seed=3", "--config.cons_weight=1",
                   "--config.data.manual_dir=/d", "--config.cons_weight=30"]


def test_each_method_trains_for_its_paper_length_times_one_factor():
  """Table 1's caption: 300 epochs, except standard augmentation (50) and CutMix (100);
  CowOut at both 300 and 100 (appendix D.3.3)."""
  flags = {}
  for method in ablation.METHODS:
    command = ablation.train_command(ablation.Run(method, 0), "c.py", "/w", [], 0.04)
    epochs = [f for f in command if f.startswith("--config.num_epochs=")]
    flags[method] = float(epochs[0].split("=")[1])
  assert flags == pytest.approx({"supervised": 12, "aug": 2, "ict": 12, "cutout": 12,
                                 "cutmix": 4, "cutmix_random_area": 4, "cowout": 12,
                                 "cowout_100ep": 4, "cowmix": 12, "all_labels": 12,
                                 "fixmatch_box": 12, "fixmatch_cow": 12, "unimatch_box": 12,
                                 "unimatch_cow": 12, "unimatch_cow_complementary": 12,
                                 "fixmatch_cow_box_area": 12, "unimatch_cow_box_area": 12,
                                 "unimatch_cow_always": 12})
  # The length comes before the common overrides, so --set num_epochs=... still wins.
  command = ablation.train_command(ablation.Run("cowout_100ep", 1), "c.py", "/w",
                                   [("num_epochs", "1")], 0.04)
  flags = command[command.index("--workdir=/w") + 1:]
  assert flags == ["--config.method=cowout", "--config.num_epochs=4", "--config.seed=1",
                   "--config.num_epochs=1"]
  # Without a factor, the config's own length.
  command = ablation.train_command(ablation.Run("aug", 0), "c.py", "/w", [])
  assert not [f for f in command if "num_epochs" in f]


def test_best_score_comes_from_the_run_else_from_its_logged_evaluations():
  final = {"miou": 0.30, "step": 300, "best_miou": 0.35, "best_step": 200}
  assert ablation.best_of_run(final, {"100": 0.2}) == {"best_miou": 0.35, "best_step": 200}
  older = {"miou": 0.30, "step": 300}  # written before runs recorded their best
  assert ablation.best_of_run(older, {"100": 0.33, "200": 0.33, "300": 0.30}) == {
      "best_miou": 0.33, "best_step": 100}
  assert ablation.best_of_run(older, {}) == {"best_miou": 0.30, "best_step": 300}


def _record(method, seed, miou, variant=()):
  run = ablation.Run(method, seed, variant)
  return {"method": method, "seed": seed, "group": run.group, "miou": miou,
          "wall_seconds": 60.0 * (seed + 1)}


def test_summary_means_stds_and_gap_against_numpy():
  records = [_record("cowmix", 0, 0.50), _record("cowmix", 1, 0.56),
             _record("supervised", 0, 0.40), _record("supervised", 1, 0.44),
             _record("all_labels", 0, 0.60), _record("all_labels", 1, 0.64),
             _record("cowmix", 0, 0.30, (("cons_weight", "1"),)),
             _record("cowmix", 0, 0.30, (("cons_weight", "30"),)),
             _record("cowmix", 0, 0.30, (("cons_weight", "3"),))]
  rows = {row["group"]: row for row in ablation.summarise(records)}
  assert [row["group"] for row in ablation.summarise(records)] == [
      "supervised", "cowmix", "cowmix [cons_weight=1]", "cowmix [cons_weight=3]",
      "cowmix [cons_weight=30]", "all_labels"]
  assert rows["cowmix"]["mean"] == pytest.approx(53.0)
  assert rows["cowmix"]["best_mean"] == pytest.approx(53.0)  # no best recorded: the final
  assert rows["cowmix"]["std"] == pytest.approx(np.std([50.0, 56.0], ddof=1))
  # (53 - 42) / (62 - 42): CowMix closes 55% of the gap; the baseline 0%, full 100%.
  assert rows["cowmix"]["gap_closed"] == pytest.approx(0.55)
  assert rows["supervised"]["gap_closed"] == pytest.approx(0.0)
  assert rows["all_labels"]["gap_closed"] == pytest.approx(1.0)
  # Seed by seed: the variant ran seed 0 only, so (30 - 40) / (60 - 40) = -0.5.
  assert rows["cowmix [cons_weight=1]"]["gap_closed"] == pytest.approx(-0.5)
  assert np.isnan(rows["cowmix [cons_weight=1]"]["std"])
  assert rows["cowmix"]["wall_minutes"] == pytest.approx(statistics.mean([1.0, 2.0]))
  table = ablation.format_table(ablation.summarise(records))
  assert "| cowmix | 2 | 53.00 +- 4.24 | 53.00 +- 4.24 | 55% | 1.5 |" in table


class FakeTraining:
  """Stands in for ``launch``: writes a results.json as a finished run would, or, for the
  run named ``interrupt_at``, requests a stop (as SIGTERM would) and writes nothing."""

  def __init__(self, interrupt_at=None):
    self.launched, self.interrupt_at = [], interrupt_at

  def __call__(self, command, workdir, stop):
    name = os.path.basename(workdir)
    self.launched.append(name)
    os.makedirs(workdir, exist_ok=True)
    if name == self.interrupt_at:
      stop.requested = True
      return -15, 1.0
    seed = int(name.rsplit("seed", 1)[1])
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump({"miou": 0.1 * (seed + 1), "per_class_iou": {"a": 0.5}, "step": 3,
                 "split": "validation"}, f)
    return 0, 2.0


def test_grid_resumes_without_redoing_finished_runs(tmp_path):
  runs = ablation.plan_runs(["supervised", "cowmix"], [0, 1])
  results_path = str(tmp_path / "results.json")
  first = FakeTraining(interrupt_at="supervised_seed1")
  results, failed = ablation.run_grid(runs, "c.py", str(tmp_path), results_path, [],
                                      ablation.StopRequest(), first)
  assert first.launched == ["supervised_seed0", "cowmix_seed0", "supervised_seed1"]
  assert sorted(results["runs"]) == ["cowmix_seed0", "supervised_seed0"] and not failed
  # A run that finished but was not recorded (the runner died in between) is recorded
  # without training again.
  FakeTraining()(None, str(tmp_path / "cowmix_seed1"), ablation.StopRequest())
  second = FakeTraining()
  results, failed = ablation.run_grid(runs, "c.py", str(tmp_path), results_path, [],
                                      ablation.StopRequest(), second)
  assert second.launched == ["supervised_seed1"]
  saved = json.loads(open(results_path).read())
  assert sorted(saved["runs"]) == sorted(r.name for r in runs)
  assert saved["runs"]["cowmix_seed1"]["miou"] == pytest.approx(0.2)
  # Wall time adds up over the interrupted and the resumed attempt.
  assert saved["runs"]["supervised_seed1"]["wall_seconds"] == pytest.approx(3.0)


def test_unreadable_results_file_names_the_file(tmp_path):
  path = tmp_path / "results.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match="results.json: not a results file"):
    ablation.load_results(str(path))


@pytest.mark.slow  # four tiny trainings in subprocesses (about 2 minutes on 2 cores)
def test_runner_resumes_an_interrupted_grid_on_the_synthetic_config(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", "")
  common = list(TINY.items()) + [("data.data_dir", str(tmp_path / "tfds"))]
  runs = ablation.plan_runs(["supervised", "cowmix"], [0])
  root, results_path = tmp_path / "runs", str(tmp_path / "runs" / "results.json")
  calls = []

  def stop_after_first(command, workdir, stop):
    calls.append(os.path.basename(workdir))
    outcome = ablation.launch(command, workdir, stop)
    stop.requested = True  # as if SIGTERM came just after the first run ended
    return outcome

  results, _ = ablation.run_grid(runs, "configs/synthetic.py", str(root), results_path,
                                 common, ablation.StopRequest(), stop_after_first)
  assert calls == ["supervised_seed0"] and list(results["runs"]) == ["supervised_seed0"]
  first_record = results["runs"]["supervised_seed0"]
  code = ablation.main(["--config=configs/synthetic.py", f"--root={root}",
                        "--methods=supervised,cowmix", "--seeds=0"]
                       + [f"--set={k}={v}" for k, v in common])
  assert code == 0
  saved = json.loads(open(results_path).read())["runs"]
  assert saved["supervised_seed0"] == first_record  # not trained again
  log = (root / "supervised_seed0" / "train.log").read_text()
  assert log.count("cowmix_jax.main") == 1
  for name in ("supervised_seed0", "cowmix_seed0"):
    final = json.loads((root / name / "results.json").read_text())
    assert saved[name]["miou"] == final["miou"] and saved[name]["step"] == 3
    assert saved[name]["per_class_iou"] == final["per_class_iou"]
    assert saved[name]["class_names"] == list(final["per_class_iou"])
    # The history read from the run's metrics.jsonl ends with the final evaluation.
    assert list(saved[name]["teacher_history"])[-1] == "3"
    assert saved[name]["teacher_history"]["3"] == pytest.approx(final["miou"], abs=5e-5)
  assert final["method"] == "cowmix" and saved["cowmix_seed0"]["wall_seconds"] > 0
  # experiments/recalibrate_bn.py re-evaluates each final teacher: with its stored
  # statistics it must give the recorded mIoU (it exits otherwise), and it adds the
  # precise-BN mIoU to the file without touching the rest of each record.
  recalibrate_bn.add_to_results(results_path, str(root), str(tmp_path / "tfds"), "train")
  annotated = json.loads(open(results_path).read())["runs"]
  for name in ("supervised_seed0", "cowmix_seed0"):
    assert 0.0 <= annotated[name].pop("precise_bn_miou") <= 1.0
    assert annotated[name] == saved[name]


def test_sweep_panels_group_values_in_numeric_order():
  runs = {}
  for value in ("30", "3", "(2.0, 8.0)", "(0.5, 2.0)"):
    key = "cons_weight" if "(" not in value else "mask.cow_sigma_range"
    record = _record("cowmix", 0, 0.5, ((key, value),))
    runs[ablation.Run("cowmix", 0, ((key, value),)).name] = dict(record, variant={key: value})
  runs["cowmix_seed0"] = dict(_record("cowmix", 0, 0.6), variant={})
  groups = plot_ablation.sweep_groups({"runs": runs})
  assert sorted(groups) == ["cons_weight", "mask.cow_sigma_range"]
  assert sorted(groups["cons_weight"], key=ablation.natural_key) == ["3", "30"]
  labels = ["(2.0, 8.0)", "(1.0, 4.0) (base)", "(0.5, 2.0)"]
  assert sorted(labels, key=ablation.natural_key) == ["(0.5, 2.0)", "(1.0, 4.0) (base)",
                                                  "(2.0, 8.0)"]
  assert [r["group"] for r in plot_ablation.base_records({"runs": runs})] == ["cowmix"]


def test_sweep_panel_puts_baseline_first_full_last_and_keeps_the_swept_seeds():
  key = "cons_weight"
  by_value = {v: [dict(_record("cowmix", 0, m), variant={key: v})]
              for v, m in (("30", 0.41), ("3", 0.38))}
  base = [dict(_record(method, seed, miou), variant={})
          for method, seed, miou in (("supervised", 0, 0.36), ("supervised", 1, 0.30),
                                     ("cowmix", 0, 0.37), ("cowmix", 1, 0.99),
                                     ("all_labels", 0, 0.45), ("cutmix", 0, 0.2))]
  bars = plot_ablation.sweep_panel(by_value, base, key, {key: "10"})
  assert [(label, role) for label, _, role in bars] == [
      ("supervised", "baseline"), ("3", "value"), ("10 (base)", "base"), ("30", "value"),
      ("all_labels", "full")]
  # Only seed 0 was swept, so seed 1's runs (0.30, 0.99) stay out of every bar.
  assert [len(values) for _, values, _ in bars] == [1] * 5
  assert [values[0] for _, values, _ in bars] == pytest.approx([36, 38, 37, 41, 45])


def test_merged_results_keep_every_run_of_every_file(tmp_path):
  grid, sweep = str(tmp_path / "grid.json"), str(tmp_path / "sweep.json")
  ablation.save_results(grid, {"runs": {"cowmix_seed0": _record("cowmix", 0, 0.4)},
                               "machine": "m"})
  ablation.save_results(sweep, {"runs": {"cowmix_cons_weight=3_seed0":
                                         _record("cowmix", 0, 0.3)}})
  merged = plot_ablation.merge_results([grid, sweep])
  assert sorted(merged["runs"]) == ["cowmix_cons_weight=3_seed0", "cowmix_seed0"]
  assert merged["runs"]["cowmix_seed0"]["miou"] == 0.4 and merged["machine"] == "m"


def test_class_order_is_the_datasets_not_the_sorted_keys():
  per_class = {"zebra": 0.1, "apple": 0.2}
  old = dict(_record("supervised", 0, 0.3), per_class_iou=per_class)
  new = dict(_record("cowmix", 0, 0.4), per_class_iou=per_class,
             class_names=["zebra", "apple"])
  assert plot_ablation.class_order([old, new]) == ["zebra", "apple"]
  assert plot_ablation.class_order([old]) == ["zebra", "apple"]  # falls back to the dict's order


def test_paired_difference_compares_seed_by_seed_against_numpy():
  records = [_record("supervised", 0, 0.30), _record("supervised", 1, 0.40),
             _record("supervised", 2, 0.35), _record("cowmix", 0, 0.33),
             _record("cowmix", 1, 0.42), _record("cutmix", 2, 0.36)]
  # Seeds 0 and 1 pair: differences 3 and 2 points. Seed 2 has no CowMix run.
  difference = plot_ablation.paired_difference(records, "cowmix")
  assert difference["n"] == 2
  assert difference["mean"] == pytest.approx(2.5)
  assert difference["std"] == pytest.approx(np.std([3.0, 2.0], ddof=1))
  single = plot_ablation.paired_difference(records, "cutmix")
  assert single["n"] == 1 and single["mean"] == pytest.approx(1.0) and np.isnan(single["std"])
  assert np.isnan(single["t_p"]) and single["sign_flip_p"] == pytest.approx(0.5)
  # One-sided paired t-test, by hand: differences 1, 2, 3 points give t = 2 / (1 / sqrt 3)
  # on 2 degrees of freedom, where P(T > t) = (1 - t / sqrt(t^2 + 2)) / 2.
  records = [_record("supervised", s, 0.30) for s in range(3)] + [
      _record("cowmix", s, 0.30 + 0.01 * (s + 1)) for s in range(3)]
  t = 2.0 * np.sqrt(3.0)
  assert plot_ablation.paired_difference(records, "cowmix")["t_p"] == pytest.approx(
      (1 - t / np.sqrt(t**2 + 2)) / 2, rel=1e-6)
  assert plot_ablation.paired_difference(records, "ict")["n"] == 0


def test_table_markdown_lists_seeds_paired_difference_gap_and_paper():
  records = [_record("supervised", 0, 0.30), _record("supervised", 1, 0.40),
             _record("cowmix", 0, 0.34), _record("cowmix", 1, 0.42),
             _record("all_labels", 0, 0.50), _record("all_labels", 1, 0.60)]
  records[2]["teacher_history"] = {"500": 0.20, "1000": 0.30, "1500": 0.32, "2000": 0.34}
  records[3]["teacher_history"] = {"1000": 0.40, "1500": 0.41, "2000": 0.42}
  # As read back from a results file, whose keys are sorted as text.
  records[2]["teacher_history"] = json.loads(json.dumps(records[2]["teacher_history"],
                                                        sort_keys=True))
  assert list(records[2]["teacher_history"])[-1] == "500"
  lines = plot_ablation.table_markdown(records).splitlines()
  assert lines[0] == ("| method | seed 0 | seed 1 | mean +- std | last 3 evals | "
                      "minus baseline (paired) [95% CI] | p (one-sided paired t) | "
                      "p (sign flip) | gap closed [95% CI] | paper (test) | wall min/run |")
  p = plot_ablation.paired_difference(records, "cowmix")["t_p"]
  # CowMix: mean 38, std of (34, 42); differences (4, 2); sign flips of (4, 2): sums 6,
  # 2, -2, -6, so p = 1/4; gap (38 - 35) / (55 - 35) = 15%; no bootstrap intervals
  # over two seeds (they would be [2, 4] and [10%, 20%], the two seeds' range); wall
  # (1 + 2) / 2 minutes. The baseline has no difference from itself (empty cell).
  std = np.std([34.0, 42.0], ddof=1)
  diff_std = np.std([4.0, 2.0], ddof=1)
  # Last 3 evaluations: (30 + 32 + 34) / 3 = 32 and (40 + 41 + 42) / 3 = 41; mean 36.5.
  assert lines[3] == (f"| cowmix | 34.00 | 42.00 | 38.00 +- {std:.2f} | 36.50 | "
                      f"+3.00 +- {diff_std:.2f} | {p:.3f} | 0.250 | "
                      "15% | 55.06 +- 1.74 | 1.5 |")
  assert lines[2] == (f"| supervised | 30.00 | 40.00 | 35.00 +- {np.std([30.0, 40.0], ddof=1):.2f}"
                      " |  |  |  |  | 0% | 48.66 +- 1.80 | 1.5 |")  # no histories: empty
  # Runs that record their best periodic score add it.
  for record, best in zip(records, (0.31, 0.41, 0.36, 0.43, 0.50, 0.61)):
    record["best_miou"] = best
  lines = plot_ablation.table_markdown(records, with_late=False, with_paper=False).splitlines()
  assert lines[0] == ("| method | seed 0 | seed 1 | mean +- std | best periodic, mean +- std "
                      "| minus baseline (paired) [95% CI] | p (one-sided paired t) | "
                      "p (sign flip) | gap closed [95% CI] | wall min/run |")
  assert lines[3] == (f"| cowmix | 34.00 | 42.00 | 38.00 +- {std:.2f} | 39.50 +- "
                      f"{np.std([36.0, 43.0], ddof=1):.2f} | +3.00 +- {diff_std:.2f} "
                      f"| {p:.3f} | 0.250 | 15% | 1.5 |")


def test_wall_time_of_a_killed_attempt_survives_through_its_heartbeat(tmp_path):
  workdir = str(tmp_path)
  ablation.add_wall_seconds(workdir, 100.0)
  # An attempt whose runner is killed leaves only its last heartbeat behind ...
  ablation.record_heartbeat(workdir, 40.0)
  assert ablation.read_wall_seconds(workdir) == pytest.approx(140.0)
  # ... which the next attempt folds into the finished time before it starts.
  ablation.fold_unfinished_attempt(workdir)
  ablation.record_heartbeat(workdir, 5.0)
  assert ablation.read_wall_seconds(workdir) == pytest.approx(145.0)
  assert ablation.add_wall_seconds(workdir, 7.0) == pytest.approx(147.0)
  assert ablation.read_wall_seconds(workdir) == pytest.approx(147.0)


def test_launch_writes_heartbeats_while_the_process_runs(tmp_path):
  workdir = str(tmp_path)
  ablation.record_heartbeat(workdir, 30.0)  # a killed earlier attempt
  record = os.path.join(workdir, "wall_seconds.json")
  # The child prints the record as it stands 0.8 s into its own run.
  child = [sys.executable, "-c",
           f"import time; time.sleep(0.8); print('SEEN', open({record!r}).read())"]
  code, seconds = ablation.launch(child, workdir, ablation.StopRequest(),
                                  heartbeat_seconds=0.1)
  assert code == 0 and seconds >= 0.8
  with open(os.path.join(workdir, "train.log")) as f:
    seen = json.loads(f.read().split("SEEN ", 1)[1])
  assert seen["wall_seconds"] == pytest.approx(30.0)
  assert 0.3 <= seen["unfinished_attempt_seconds"] <= seconds


def test_unreadable_wall_time_record_names_the_file(tmp_path):
  with open(tmp_path / "wall_seconds.json", "w") as f:
    f.write("{not json")
  with pytest.raises(SystemExit, match="wall_seconds.json"):
    ablation.read_wall_seconds(str(tmp_path))


def test_teacher_history_reads_metrics_jsonl_and_keeps_the_latest_repeat(tmp_path):
  # As train.py writes it: losses at log steps, mIoUs at evaluations, a resume from the
  # checkpoint of step 500 that evaluates step 1000 again, and a line cut short by a kill.
  lines = [{"step": 500, "loss": 0.5}, {"step": 500, "teacher_miou": 0.2835,
                                         "student_miou": 0.2888},
           {"step": 1000, "teacher_miou": 0.3448}]
  text = "".join(json.dumps(line) + "\n" for line in lines) + '{"step": 1000, "teach\n'
  text += json.dumps({"step": 1000, "teacher_miou": 0.3450}) + "\n"
  text += json.dumps({"step": 1500, "teacher_miou": 0.36, "loss": float("nan")}) + "\n"
  (tmp_path / "metrics.jsonl").write_text(text)
  assert ablation.teacher_history(str(tmp_path)) == pytest.approx(
      {"500": 0.2835, "1000": 0.3450, "1500": 0.36})
  assert list(ablation.teacher_history(str(tmp_path))) == ["500", "1000", "1500"]
  assert ablation.teacher_history(str(tmp_path / "missing")) == {}


def test_report_only_prints_the_recorded_table_and_trains_nothing(tmp_path, monkeypatch,
                                                                   capsys):
  monkeypatch.chdir(REPO)
  root = tmp_path / "runs"
  root.mkdir()
  results_path = str(root / "results.json")
  ablation.save_results(results_path, {"runs": {"cowmix_seed0": _record("cowmix", 0, 0.415)}})
  assert ablation.main(["--config=configs/synthetic.py", f"--root={root}", "--report_only"]) == 0
  assert "| cowmix | 1 | 41.50 |" in capsys.readouterr().out
  assert sorted(os.listdir(root)) == ["results.json"]


def test_marked_block_is_replaced_and_missing_markers_are_named():
  text = "intro\n<!-- table1:start -->\n| old |\n<!-- table1:end -->\nafter\n"
  assert plot_ablation.replace_marked_block(text, "table1", "| new |") == (
      "intro\n<!-- table1:start -->\n| new |\n<!-- table1:end -->\nafter\n")
  with pytest.raises(ValueError, match="table1:start"):
    plot_ablation.replace_marked_block("no markers", "table1", "x")
  with pytest.raises(ValueError, match="in that order"):
    plot_ablation.replace_marked_block("<!-- t:end --> <!-- t:start -->", "t", "x")


def test_update_markdown_needs_the_required_markers_and_skips_absent_optional_ones(tmp_path):
  path = tmp_path / "RESULTS.md"
  path.write_text("<!-- a_table1:start -->\nold\n<!-- a_table1:end -->\n"
                  "<!-- a_per_class:start -->\nold\n<!-- a_per_class:end -->\n")
  written = plot_ablation.update_markdown(
      str(path), {"a_table1": "T", "a_table1_learned": "L", "a_per_class": "P"},
      required=["a_table1"])
  assert written == ["a_table1", "a_per_class"]  # no a_table1_learned markers: left out
  assert path.read_text() == ("<!-- a_table1:start -->\nT\n<!-- a_table1:end -->\n"
                              "<!-- a_per_class:start -->\nP\n<!-- a_per_class:end -->\n")
  with pytest.raises(SystemExit, match="b_table1:start"):
    plot_ablation.update_markdown(str(path), {"b_table1": "T"}, required=["b_table1"])


def test_per_class_table_averages_the_baselines_seeds_against_numpy():
  def record(method, seed, ious, variant=()):
    return dict(_record(method, seed, float(np.mean(ious)), variant),
                class_names=["sky", "car"], per_class_iou=dict(zip(["sky", "car"], ious)))
  records = [record("supervised", 0, [0.90, 0.40]), record("supervised", 1, [0.80, 0.20]),
             record("cowmix", 0, [0.92, 0.50]), record("cowmix", 1, [0.94, 0.10]),
             record("cowmix", 1, [0.10, 0.10], (("cons_weight", "3"),)),  # a sweep: not base
             record("all_labels", 0, [0.95, 0.60]), record("all_labels", 1, [0.93, 0.62]),
             record("all_labels", 2, [0.10, 0.10]),  # a seed the baseline lacks: not counted
             record("ict", 0, [0.50, 0.00])]  # one seed of two: left out
  lines = plot_ablation.per_class_markdown(records).splitlines()
  assert lines[0] == "| class | supervised | cowmix | all_labels |"
  sky = [np.mean([0.90, 0.80]), np.mean([0.92, 0.94]), np.mean([0.95, 0.93])]
  car = [np.mean([0.40, 0.20]), np.mean([0.50, 0.10]), np.mean([0.60, 0.62])]
  assert lines[2] == "| sky | " + " | ".join(f"{100 * v:.1f}" for v in sky) + " |"
  assert lines[3] == "| car | " + " | ".join(f"{100 * v:.1f}" for v in car) + " |"
  miou = [100 * (s + c) / 2 for s, c in zip(sky, car)]
  assert lines[4] == "| mean (mIoU) | " + " | ".join(f"{v:.1f}" for v in miou) + " |"
  assert lines[6] == "Mean over seeds 0, 1; left out, for lacking some of these seeds: ict."
  assert plot_ablation.per_class_markdown(records[2:3]) == ""  # no baseline


def test_learned_classes_and_the_table_restricted_to_them():
  def record(method, seed, ious):
    return dict(_record(method, seed, float(np.mean(ious))), class_names=["a", "b", "c"],
                per_class_iou=dict(zip("abc", ious)), teacher_history={"1": 0.5})
  records = [record("all_labels", 0, [0.8, 0.05, 0.6]), record("all_labels", 1, [0.8, 0.2, 0.4]),
             record("supervised", 0, [0.4, 0.3, 0.2]), record("cowmix", 0, [0.6, 0.0, 0.3])]
  # b: mean 0.125 over the full runs (>= 0.10), so every class counts at 10%; at 15% b drops.
  assert plot_ablation.learned_classes(records) == ["a", "b", "c"]
  assert plot_ablation.learned_classes(records, threshold=0.15) == ["a", "c"]
  assert plot_ablation.learned_classes(records[2:]) == []
  records[3]["best_miou"], records[3]["best_step"] = 0.4, 1  # an all-class number
  restricted = plot_ablation.restrict_to_classes(records, ["a", "c"])
  assert [r["miou"] for r in restricted] == pytest.approx([0.7, 0.6, 0.3, 0.45])
  assert "best_miou" not in restricted[3] and "best_step" not in restricted[3]
  header = plot_ablation.table_markdown(restricted).splitlines()[0]
  assert "best periodic" not in header
  assert restricted[3]["teacher_history"] == {} and records[3]["teacher_history"]
  assert records[3]["miou"] == pytest.approx(0.3)  # the originals are untouched


def test_table_markdown_can_leave_out_the_late_and_paper_columns():
  records = [_record("supervised", 0, 0.30), _record("cowmix", 0, 0.34)]
  lines = plot_ablation.table_markdown(records, with_late=False, with_paper=False).splitlines()
  assert lines[0] == ("| method | seed 0 | mean +- std | minus baseline (paired) [95% CI] | "
                      "gap closed [95% CI] | wall min/run |")
  assert lines[3] == "| cowmix | 34.00 | 34.00 | +4.00 |  | 1.0 |"  # no full runs: no gap


def test_saving_a_run_keeps_what_other_tools_added_to_the_file(tmp_path):
  path = str(tmp_path / "results.json")
  ablation.save_results(path, {"runs": {"supervised_seed0": _record("supervised", 0, 0.3)}})
  # Another tool annotates the file while the grid runs ...
  annotated = ablation.load_results(path)
  annotated["runs"]["supervised_seed0"]["precise_bn_miou"] = 0.31
  ablation.save_results(path, annotated)
  # ... and the grid, holding an older copy, records the next run.
  results = ablation.save_run(path, "cowmix_seed0", _record("cowmix", 0, 0.4))
  saved = ablation.load_results(path)
  assert saved == results
  assert saved["runs"]["supervised_seed0"]["precise_bn_miou"] == 0.31
  assert saved["runs"]["cowmix_seed0"]["miou"] == 0.4
  # A record that is written again keeps the added fields it does not set itself.
  ablation.save_run(path, "supervised_seed0", dict(_record("supervised", 0, 0.3),
                                                   teacher_history={"1": 0.3}))
  again = ablation.load_results(path)["runs"]["supervised_seed0"]
  assert again["precise_bn_miou"] == 0.31 and again["teacher_history"] == {"1": 0.3}


def test_table_markdown_shows_precise_bn_when_every_seed_has_it():
  records = [dict(_record("supervised", 0, 0.30), precise_bn_miou=0.29),
             dict(_record("cowmix", 0, 0.34), precise_bn_miou=0.37),
             dict(_record("cowmix", 1, 0.36), precise_bn_miou=0.39),
             _record("cutmix", 0, 0.33), _record("cutmix", 1, 0.35),
             dict(_record("cutmix", 2, 0.35), precise_bn_miou=0.35)]
  lines = plot_ablation.table_markdown(records, with_late=False, with_paper=False).splitlines()
  assert lines[0].startswith("| method | seed 0 | seed 1 | seed 2 | mean +- std | precise BN |")
  cells = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:]}
  assert cells["supervised"][5] == "29.00"
  assert cells["cowmix"][5] == "38.00"  # (37 + 39) / 2
  assert cells["cutmix"][5] == ""  # not every seed was recalibrated
  restricted = plot_ablation.restrict_to_classes(
      [dict(r, per_class_iou={"a": 0.5}) for r in records[:2]], ["a"])
  assert all("precise_bn_miou" not in r for r in restricted)


def test_gap_closed_compares_the_same_seeds_only():
  # The baseline's seed 1 drew a poor labelled subset; CowMix has not run seed 1 yet.
  records = [_record("supervised", 0, 0.36), _record("supervised", 1, 0.26),
             _record("all_labels", 0, 0.45), _record("all_labels", 1, 0.45),
             _record("cowmix", 0, 0.37)]
  rows = {row["group"]: row for row in ablation.summarise(records)}
  # Seed 0 only: (37 - 36) / (45 - 36) = 1/9, not (37 - 31) / (45 - 31) from the means.
  assert rows["cowmix"]["gap_closed"] == pytest.approx(1 / 9)
  # Full supervision over both seeds: ((45 - 36) + (45 - 26)) / ((45 - 36) + (45 - 26)).
  assert rows["all_labels"]["gap_closed"] == pytest.approx(1.0)
  assert ablation.paired_gap_closed(records[4:], records[:1], []) is None
  assert ablation.paired_gap_closed(records[4:], records[:1], records[:1]) is None


def test_per_class_chart_uses_the_seeds_every_method_ran():
  records = [_record("supervised", 0, 0.3), _record("supervised", 1, 0.2),
             _record("cowmix", 0, 0.4), _record("cowmix", 1, 0.3),
             _record("all_labels", 0, 0.5), _record("cutmix", 2, 0.1),
             _record("cowmix", 0, 0.9, (("cons_weight", "3"),))]
  kept = plot_ablation.common_seed_records(records, ["supervised", "cowmix", "all_labels"])
  assert sorted((r["method"], r["seed"]) for r in kept) == [
      ("all_labels", 0), ("cowmix", 0), ("supervised", 0)]
  assert all(r["miou"] != 0.9 for r in kept)  # sweep variants are not base runs


def test_a_longer_grid_continues_the_finished_runs_of_a_shorter_one(tmp_path):
  short, longer = tmp_path / "short", tmp_path / "longer"
  finished = short / "cowmix_seed0"
  (finished / "checkpoints" / "4404").mkdir(parents=True)
  (finished / "checkpoints" / "4404" / "state").write_text("weights")
  (finished / "metrics.jsonl").write_text('{"step": 4404, "teacher_miou": 0.45}\n')
  (finished / "results.json").write_text('{"miou": 0.45}')
  seen = {}

  class Recording(FakeTraining):
    def __call__(self, command, workdir, stop):
      seen[os.path.basename(workdir)] = sorted(os.listdir(workdir))
      return super().__call__(command, workdir, stop)

  runs = ablation.plan_runs(["supervised", "cowmix"], [0])
  results, failed = ablation.run_grid(runs, "c.py", str(longer), str(longer / "results.json"),
                                      [], ablation.StopRequest(), Recording(),
                                      epoch_scale=0.08, continue_from=str(short))
  # CowMix starts from a copy of the finished run, without its final record ...
  assert seen == {"cowmix_seed0": ["checkpoints", "metrics.jsonl"]}
  assert (longer / "cowmix_seed0" / "checkpoints" / "4404" / "state").read_text() == "weights"
  assert (finished / "results.json").exists()  # ... and leaves the source as it was.
  assert not (longer / "cowmix_seed0.partial").exists()
  assert sorted(results["runs"]) == ["cowmix_seed0"]
  # The baseline has nothing to continue: it fails by name and nothing is created.
  assert failed == ["supervised_seed0"] and not (longer / "supervised_seed0").exists()


def test_continuing_needs_a_constant_learning_rate_and_an_existing_root(tmp_path,
                                                                        monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(ablation.app.UsageError, match="no such directory"):
    ablation.check_continuable("configs/camvid_cpu.py", [], str(tmp_path / "missing"))
  with pytest.raises(ablation.app.UsageError, match="lr_schedule is 'cosine'"):
    ablation.check_continuable("configs/camvid_cpu.py", [("lr_schedule", "cosine")],
                               str(tmp_path))
  ablation.check_continuable("configs/camvid_cpu.py", [], str(tmp_path))  # constant: fine


class FakeTrainingAndEvaluation(FakeTraining):
  """Trains as FakeTraining; an evaluate command writes its split's score (the seed's
  mIoU minus 0.05) at ``step`` into the evaluation file it names."""

  def __init__(self, step=3, **kwargs):
    super().__init__(**kwargs)
    self.step, self.evaluated = step, []

  def __call__(self, command, workdir, stop):
    if "cowmix_jax.evaluate" not in command:
      return super().__call__(command, workdir, stop)
    split = next(a for a in command if a.startswith("--split=")).split("=", 1)[1]
    output = next(a for a in command if a.startswith("--output=")).split("=", 1)[1]
    self.evaluated.append((os.path.basename(workdir), split))
    seed = int(os.path.basename(workdir).rsplit("seed", 1)[1])
    with open(output, "w") as f:
      json.dump({"miou": 0.1 * (seed + 1) - 0.05, "per_class_iou": {"a": 0.25},
                 "step": self.step, "split": split}, f)
    return 0, 1.0


def test_each_finished_run_is_also_scored_on_the_extra_splits(tmp_path):
  runs = ablation.plan_runs(["supervised"], [0, 1])
  results_path = str(tmp_path / "results.json")
  # A grid recorded before without test scores: seed 0 is in the results file.
  ablation.run_grid(runs[:1], "c.py", str(tmp_path), results_path, [],
                    ablation.StopRequest(), FakeTraining())
  fake = FakeTrainingAndEvaluation()
  results, failed = ablation.run_grid(runs, "c.py", str(tmp_path), results_path, [],
                                      ablation.StopRequest(), fake, eval_splits=["test"])
  assert not failed and fake.launched == ["supervised_seed1"]  # seed 0 not retrained
  assert fake.evaluated == [("supervised_seed0", "test"), ("supervised_seed1", "test")]
  for seed in (0, 1):
    record = json.loads(open(results_path).read())["runs"][f"supervised_seed{seed}"]
    assert record["test_miou"] == pytest.approx(0.1 * (seed + 1) - 0.05)
    assert record["test_per_class_iou"] == {"a": 0.25}
    assert record["miou"] == pytest.approx(0.1 * (seed + 1))  # val untouched
  # Run again: nothing is trained or evaluated.
  again = FakeTrainingAndEvaluation()
  ablation.run_grid(runs, "c.py", str(tmp_path), results_path, [], ablation.StopRequest(),
                    again, eval_splits=["test"])
  assert again.launched == [] and again.evaluated == []


def test_an_evaluation_of_another_step_than_the_final_one_fails_the_run(tmp_path):
  runs = ablation.plan_runs(["supervised"], [0])
  results, failed = ablation.run_grid(runs, "c.py", str(tmp_path),
                                      str(tmp_path / "results.json"), [],
                                      ablation.StopRequest(),
                                      FakeTrainingAndEvaluation(step=2),
                                      eval_splits=["test"])
  assert failed == ["supervised_seed0"]
  assert "test_miou" not in results["runs"]["supervised_seed0"]


def test_a_failed_run_prints_its_own_last_line(tmp_path, capsys):
  """A run's one-line error (what main prints last) is in the runner's FAILED line."""
  def failing(command, workdir, stop):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "train.log"), "a") as log:
      log.write("start-up lines\nmain.py: config.cons_weight=-1.0 must be in [0, inf]\n\n")
    return 2, 1.0

  _, failed = ablation.run_grid(ablation.plan_runs(["cowmix"], [0]), "c.py", str(tmp_path),
                                str(tmp_path / "results.json"), [], ablation.StopRequest(),
                                failing)
  assert failed == ["cowmix_seed0"]
  line = [x for x in capsys.readouterr().out.splitlines() if "FAILED" in x][0]
  assert "exit code 2): main.py: config.cons_weight=-1.0 must be in [0, inf]" in line
  assert ablation.last_log_line(str(tmp_path / "never_ran")) == ""


def test_a_misspelt_override_key_stops_the_grid_before_any_run(tmp_path, monkeypatch):
  """--config.KEY, --set and --vary keys are checked against the config up front (with
  the closest keys it has); nothing is launched and no folder is made."""
  config = os.path.join(REPO, "configs", "synthetic.py")
  ablation.check_override_keys(config, ["cons_weight", "mask.cow_sigma_range",
                                        "data.num_labelled"])  # real keys pass
  with pytest.raises(app.UsageError, match=r"--config.cons_weigth: .* has no key "
                     r"'cons_weigth'; did you mean cons_weight"):
    ablation.check_override_keys(config, ["cons_weight", "cons_weigth"])
  with pytest.raises(app.UsageError, match="'mask.cow_sigma'"):
    ablation.check_override_keys(config, ["mask.cow_sigma"])

  launched = []
  monkeypatch.setattr(ablation, "launch", lambda *args: launched.append(args) or (0, 0.0))
  root = tmp_path / "grid"
  for bad in (["--config.cons_weigth=3"], ["--set=cons_weigth=3"],
              ["--vary=cons_weigth=1;3"]):
    with pytest.raises(app.UsageError, match="cons_weigth"):
      ablation.main([f"--config={config}", f"--root={root}", "--methods=cowmix",
                     "--seeds=0", *bad])
  assert launched == [] and not root.exists()


def test_a_report_of_a_grid_that_never_ran_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  root = tmp_path / "never"
  with pytest.raises(app.UsageError, match=r"--report_only: there is no .*never/results.json"):
    ablation.main(["--config=configs/synthetic.py", f"--root={root}", "--report_only"])
  assert not root.exists()


def test_the_plots_refuse_a_missing_or_empty_results_file(tmp_path):
  missing, empty = str(tmp_path / "nowhere.json"), str(tmp_path / "empty.json")
  ablation.save_results(empty, {"runs": {}})
  with pytest.raises(app.UsageError, match=f"--results={missing}: no such file"):
    plot_ablation.merge_results([missing])
  with pytest.raises(ValueError, match=f"--common_results: no run recorded in {empty}"):
    plot_ablation.merge_results([empty], "--common_results")


def test_the_evaluate_command_scores_the_final_teacher_with_the_saved_config():
  command = ablation.evaluate_command("runs/x", "test")
  assert command[1:3] == ["-m", "cowmix_jax.evaluate"]
  assert {"--workdir=runs/x", "--checkpoint=latest", "--model=teacher", "--split=test",
          "--output=runs/x/evaluation_test.json"} == set(command[3:])
  assert not any(a.startswith("--config") for a in command)


def test_code_flag_runs_the_other_checkouts_package(tmp_path, monkeypatch):
  # A stand-in checkout whose cowmix_jax.main prints where it was imported from; run
  # from this repository's root, whose own package would otherwise come first.
  fake = tmp_path / "frozen" / "cowmix_jax"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("")
  (fake / "main.py").write_text("import cowmix_jax\nprint(cowmix_jax.__file__)\n")
  monkeypatch.chdir(REPO)
  command = ablation.python_module_command("cowmix_jax.main", str(tmp_path / "frozen"))
  output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  assert output.strip() == str(fake / "__init__.py")
  plain = subprocess.run(ablation.python_module_command("cowmix_jax.conventions"),
                         capture_output=True, text=True)
  assert plain.returncode == 0
  with pytest.raises(ablation.app.UsageError, match="not a checkout"):
    ablation.check_code(str(tmp_path))
  ablation.check_code(str(tmp_path / "frozen"))


def _save_records(path, prefix, count):
  for i in range(count):
    ablation.save_run(path, f"{prefix}{i}", {"miou": i / count})


def test_two_runners_saving_into_one_results_file_keep_every_record(tmp_path):
  path = str(tmp_path / "results.json")
  context = multiprocessing.get_context("spawn")
  writers = [context.Process(target=_save_records, args=(path, prefix, 40))
             for prefix in ("a", "b")]
  for writer in writers:
    writer.start()
  for writer in writers:
    writer.join()
  assert all(w.exitcode == 0 for w in writers)
  runs = json.loads(open(path).read())["runs"]
  assert sorted(runs) == sorted(f"{p}{i}" for p in "ab" for i in range(40))


def test_a_stopped_grid_exits_with_the_sigterm_status_so_loops_stop(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(ablation.signal, "signal", lambda *args: None)  # keep pytest's
  monkeypatch.setattr(ablation, "launch", FakeTraining(interrupt_at="supervised_seed0"))
  code = ablation.main(["--config=configs/synthetic.py", f"--root={tmp_path}",
                        "--methods=supervised", "--seeds=0,1"])
  assert code == ablation.STOPPED_STATUS == 143
  monkeypatch.setattr(ablation, "launch", FakeTraining())
  assert ablation.main(["--config=configs/synthetic.py", f"--root={tmp_path}",
                        "--methods=supervised", "--seeds=0,1"]) == 0


def test_cutmix_random_area_draws_its_area_as_cutout_does(monkeypatch):
  """Section 3.3's CutMix: the cutmix method with CutOut's area range, U(0, 1)."""
  monkeypatch.chdir(REPO)
  command = ablation.train_command(ablation.Run("cutmix_random_area", 0), "c.py", "/w", [])
  assert "--config.method=cutmix" in command
  assert "--config.mask.cutmix_p_range=(0.0, 1.0)" in command
  config = config_base.load_config_file("configs/camvid_cpu.py")
  assert tuple(config.mask.cutout_p_range) == (0.0, 1.0)
  assert tuple(config.mask.cutmix_p_range) == (0.5, 0.5)  # the authors' later code


def test_records_on_another_split_carry_that_splits_scores_only():
  record = dict(_record("cowmix", 0, 0.40), best_miou=0.41, test_miou=0.45,
                test_per_class_iou={"a": 0.45})
  copies = plot_ablation.on_split([record, _record("cowmix", 1, 0.5)], "test")
  assert len(copies) == 1  # seed 1 was never scored on test
  assert copies[0]["miou"] == 0.45 and copies[0]["per_class_iou"] == {"a": 0.45}
  assert "best_miou" not in copies[0] and copies[0]["teacher_history"] == {}
  assert record["miou"] == 0.40  # the original is untouched


def test_targets_are_judged_from_the_paired_statistics():
  base = [40.0, 42.0, 41.0, 43.0, 44.0]
  cowmix = [44.0, 45.0, 46.0, 47.0, 49.0]  # +4, +3, +5, +4, +5: every flip lower
  full = [50.0, 52.0, 51.0, 53.0, 54.0]  # gap 10 on every seed: share 42% [36%, 48%]
  cowout = [46.0, 48.0, 47.0, 48.0, 50.0]  # CowMix below CowOut on every seed
  records = [_record(m, s, v / 100) for m, values in
             (("supervised", base), ("cowmix", cowmix), ("all_labels", full),
              ("cowout", cowout)) for s, v in enumerate(values)]
  lines = plot_ablation.targets_markdown(records).splitlines()
  assert lines[0].endswith("sign-flip p 0.031: **established**")
  share = np.mean(np.subtract(cowmix, base)) / 10
  assert f"{100 * share:.0f}%" in lines[1] and lines[1].endswith("**open**")
  assert "cowout -1.60 " in lines[2] and lines[2].endswith("**refuted**")
  # The same runs without seed 4: every difference still positive (sign-flip p 1/16),
  # but four seeds cannot decide anything.
  four = plot_ablation.targets_markdown([r for r in records if r["seed"] < 4]).splitlines()
  assert four[0].endswith("sign-flip p 0.062: **open (fewer than 5 seeds)**")
  assert four[2].endswith("(4 seeds: open (fewer than 5 seeds)): **open**")


def test_share_of_the_gap_is_judged_on_both_of_its_intervals():
  """The percentile bootstrap is narrow over few seeds: a share is refuted (or
  established) only when its Fieller interval agrees (issue 35's interim 27%:
  bootstrap [13%, 39%], Fieller [8%, 44%] against the paper's 41%)."""
  share = {"n": 7, "share": 0.27, "low": 0.13, "high": 0.39, "t_low": 0.083, "t_high": 0.439}
  assert plot_ablation.share_verdict(share, 0.41) == "open"
  assert plot_ablation.share_verdict(dict(share, t_high=0.40), 0.41) == "refuted"
  assert plot_ablation.share_verdict(share, 0.10) == "open"  # the Fieller low is below
  assert plot_ablation.share_verdict(share, 0.05) == "established"  # both lows above
  unbounded = dict(share, t_low=float("-inf"), t_high=float("inf"))
  assert plot_ablation.share_verdict(unbounded, 0.41) == "open"
  assert plot_ablation.share_claim_text(share, 0.41) == (
      "27% [13%, 39%], t-based [8%, 44%] over 7 seeds: **open**")
  assert "t-based [-inf%, inf%]" in plot_ablation.share_claim_text(unbounded, 0.41)


def test_summary_puts_val_and_test_of_the_same_runs_side_by_side():
  """Issue 35: one screen, val and test from the runs scored on both (a run without a
  test score and a swept variant stay out), beside the paper's test (hand-worked)."""
  def scored(method, seed, val, test, variant=()):
    return dict(_record(method, seed, val, variant), test_miou=test, test_per_class_iou={})
  records = [scored("supervised", 0, 0.40, 0.30), scored("supervised", 1, 0.44, 0.36),
             scored("cowmix", 0, 0.45, 0.33), scored("cowmix", 1, 0.47, 0.37),
             _record("cowmix", 2, 0.60),  # never scored on test
             scored("cowmix", 0, 0.20, 0.20, (("cons_weight", "1"),)),
             scored("all_labels", 0, 0.50, 0.40), scored("all_labels", 1, 0.54, 0.46)]
  lines = plot_ablation.summary_markdown(records).splitlines()
  rows = {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")]
          for line in lines[2:]}
  assert list(rows) == ["supervised", "cowmix", "all_labels"]
  cowmix = rows["cowmix"]
  assert cowmix[1:3] == ["0, 1", "46.00 +- 1.41"]
  assert cowmix[3] == "+4.00 +- 1.41"  # +5 and +3; no interval over two seeds
  assert cowmix[4] == "35.00 +- 2.83"
  assert cowmix[5] == "+2.00 +- 1.41"  # +3 and +1
  assert cowmix[6] == "40% / 20%"  # gaps of 10 points
  assert cowmix[7:] == ["55.06 +- 1.74", "+6.40"]
  assert rows["supervised"][3] == "" and rows["supervised"][8] == ""
  assert plot_ablation.summary_markdown([_record("cowmix", 0, 0.5)]) == ""


def test_summary_keeps_only_the_seeds_every_method_ran_so_its_columns_subtract():
  """A partial grid: CowOut has seeds 0 and 1 only, so every row is over 0 and 1 and
  each mean minus the baseline's is the paired difference (the review of 2026-12-05:
  over unequal seeds they did not subtract)."""
  def scored(method, seed, val, test):
    return dict(_record(method, seed, val), test_miou=test, test_per_class_iou={})
  records = [scored("supervised", 0, 0.40, 0.30), scored("supervised", 1, 0.44, 0.36),
             scored("supervised", 2, 0.50, 0.50), scored("cowmix", 0, 0.45, 0.33),
             scored("cowmix", 1, 0.47, 0.37), scored("cowmix", 2, 0.40, 0.40),
             scored("cowout", 0, 0.41, 0.31), scored("cowout", 1, 0.47, 0.38)]
  lines = plot_ablation.summary_markdown(records).splitlines()
  rows = {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")]
          for line in lines[2:]}
  assert {row[1] for row in rows.values()} == {"0, 1"}
  assert rows["supervised"][2] == "42.00 +- 2.83" and rows["supervised"][4] == "33.00 +- 4.24"
  assert rows["cowout"][2] == "44.00 +- 4.24" and rows["cowout"][3].startswith("+2.00 ")
  assert rows["cowout"][4] == "34.50 +- 4.95" and rows["cowout"][5].startswith("+1.50 ")


def test_claim_three_needs_both_tests_like_claim_one():
  """CowMix minus CutOut of +4, +5, +4, +6, -1: the bootstrap interval lies above 0, but
  the exact sign-flip p is 2/32 = 0.0625, so CowMix's lead over CutOut stays open."""
  base = [40.0, 41.0, 42.0, 43.0, 44.0]
  cowmix = [45.0, 46.0, 47.0, 48.0, 49.0]
  cutout = [41.0, 41.0, 43.0, 42.0, 50.0]
  records = [_record(m, s, v / 100) for m, values in
             (("supervised", base), ("cowmix", cowmix), ("cutout", cutout))
             for s, v in enumerate(values)]
  difference = plot_ablation.paired_difference(records, "cowmix", baseline="cutout")
  assert difference["low"] > 0 and difference["sign_flip_p"] == pytest.approx(2 / 32)
  line = plot_ablation.targets_markdown(records).splitlines()[2]
  assert line.endswith("(5 seeds: open): **open**")


def test_table_at_both_lengths_takes_each_column_from_the_right_runs():
  """Issue 35: each column at its paper length x 0.04 and at the baseline's 12 epochs;
  CowOut's 300 epochs are its common length, cowout_100ep and CutMix have none unless
  rerun at 12 epochs (hand-worked means, stds and paired differences)."""
  paper = [_record("supervised", 0, 0.40), _record("supervised", 1, 0.44),
           _record("cutmix", 0, 0.38), _record("cutmix", 1, 0.41),
           _record("cowout", 0, 0.46), _record("cowout", 1, 0.47),
           _record("cowout_100ep", 0, 0.39), _record("cowout_100ep", 1, 0.40),
           _record("aug", 0, 0.35)]
  common = [_record("cutmix", 0, 0.43), _record("cutmix", 1, 0.45)]
  table = plot_ablation.lengths_markdown(paper, common, 0.04)
  rows = {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")]
          for line in table.splitlines()[2:]}
  assert table.splitlines()[0].split(" | ")[1] == "paper's length x 0.04: epochs"
  assert "common length (12 epochs): runs" in table.splitlines()[0]
  assert list(rows) == ["supervised", "aug", "cutmix", "cowout", "cowout_100ep"]
  assert rows["supervised"][1:] == ["12", "2", "42.00 +- 2.83", "", "2", "42.00 +- 2.83", ""]
  # CutMix at 4 epochs: -2 and -3 points against the baseline; at 12 epochs: +3 and +1.
  assert rows["cutmix"][1:4] == ["4", "2", "39.50 +- 2.12"]
  assert rows["cutmix"][4] == "-2.50 +- 0.71"
  assert rows["cutmix"][5:7] == ["2", "44.00 +- 1.41"]
  assert rows["cutmix"][7] == "+2.00 +- 1.41"
  # CowOut: the same runs in both; cowout_100ep and augmentation: no common-length runs.
  assert rows["cowout"][2:5] == rows["cowout"][5:8] and rows["cowout"][1] == "12"
  assert rows["cowout_100ep"][1] == "4" and rows["cowout_100ep"][5:] == ["", "", ""]
  assert rows["aug"][1:4] == ["2", "1", "35.00"] and rows["aug"][5:] == ["", "", ""]


def test_claim_three_at_the_common_length_pairs_cowmix_with_the_longer_runs():
  """At 4 epochs CutMix trails CowMix on every seed; run to 12 epochs it leads on every
  seed (hand-made: by 1 to 6.6 points), so claim 3 turns from established to refuted, and
  cowout_100ep (no common-length run) drops out of the comparison."""
  seeds = range(5)
  paper = ([_record("supervised", s, 0.40) for s in seeds]
           + [_record("cowmix", s, 0.45 + 0.01 * s) for s in seeds]
           + [_record("cutmix", s, 0.38) for s in seeds]
           + [_record("cowout_100ep", s, 0.39) for s in seeds])
  common = [_record("cutmix", s, 0.46 + 0.02 * s + 0.001 * s * s) for s in seeds]
  at_paper_length = plot_ablation.ranking_claim(paper)
  assert "cutmix +9.00 +- 1.58" in at_paper_length
  assert at_paper_length.endswith("**established**")
  at_common_length = plot_ablation.ranking_claim(
      plot_ablation.common_length_records(paper, common))
  assert at_common_length.startswith("3. cowmix at least every other perturbation")
  assert "cowout_100ep" not in at_common_length
  # cowmix minus cutmix per seed: -1, -2.1, -3.4, -4.9, -6.6 (mean -3.6, all negative)
  assert "cutmix -3.60 +- 2.22" in at_common_length
  assert at_common_length.endswith("(5 seeds: refuted): **refuted**")


@pytest.mark.parametrize("column", ["fixmatch_box", "fixmatch_cow", "unimatch_box",
                                    "unimatch_cow", "unimatch_cow_complementary",
                                    "fixmatch_cow_box_area", "unimatch_cow_box_area",
                                    "unimatch_cow_always"])
def test_strong_view_columns_make_configs_that_pass_the_start_up_checks(column, monkeypatch):
  """Issue 38's columns on the CPU-scale protocol: each command's overrides, applied as
  main applies them, give a valid config of the named method, mask and view pairing."""
  from cowmix_jax import config_checks, mixing

  monkeypatch.chdir(REPO)
  command = ablation.train_command(ablation.Run(column, 0), "configs/camvid_cpu.py", "/w", [])
  config = config_base.load_config_file("configs/camvid_cpu.py")
  for flag in command[command.index("--workdir=/w") + 1:]:
    key, value = flag[len("--config."):].split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    if isinstance(node[leaf], bool):
      node[leaf] = value == "True"
    elif isinstance(node[leaf], tuple):  # "(0.02, 0.4)", as the command line reads it
      node[leaf] = tuple(ast.literal_eval(value))
    else:
      node[leaf] = type(node[leaf])(value)
  config_checks.validate_config(config, device_count=1)
  perturbation = mixing.make_perturbation(config)
  assert isinstance(perturbation, mixing.StrongViews)
  assert perturbation.views == (2 if column.startswith("unimatch") else 1)
  assert perturbation.mask_kind == column.split("_")[1]
  assert perturbation.complementary == column.endswith("complementary")
  assert perturbation.mix_probability == (1.0 if column.endswith("always") else 0.5)
  # The box-area controls draw cow masks' proportions as the boxes' areas.
  assert (tuple(config.mask.cowmix_p_range) == tuple(config.mask.box_area_range)) == (
      column.endswith("box_area"))


def test_strong_view_claims_pair_cow_against_box_and_judge_the_best_share():
  """Issue 38: cow minus box inside FixMatch and UniMatch, complementary minus
  independent cow masks (paired), and the best column's share of the gap against 50%;
  on test the column chosen on validation is judged."""
  base = [40.0, 42.0, 41.0, 43.0, 44.0]
  full = [50.0, 52.0, 51.0, 53.0, 54.0]  # gap 10 on every seed
  columns = {"fixmatch_box": [44.0, 45.0, 45.0, 47.0, 48.0],  # +4 +3 +4 +4 +4: 38%
             "fixmatch_cow": [45.0, 46.0, 46.0, 48.0, 49.0],  # box + 1 on every seed
             "unimatch_box": [47.0, 48.0, 47.0, 49.0, 50.0],  # +7 +6 +6 +6 +6: 62%
             "unimatch_cow": [46.0, 49.0, 46.0, 50.0, 49.0]}  # box -1 +1 -1 +1 -1
  records = [_record(m, s, v / 100) for m, values in
             (("supervised", base), ("all_labels", full), *columns.items())
             for s, v in enumerate(values)]
  lines = plot_ablation.strong_view_markdown(records).splitlines()
  assert lines[0].startswith("- fixmatch_cow minus fixmatch_box: +1.00 +- 0.00")
  assert lines[0].endswith("sign-flip p 0.031: **established**")
  assert lines[1].startswith("- unimatch_cow minus unimatch_box: -0.20")
  assert lines[1].endswith("**open**")
  assert plot_ablation.best_strong_view_column(records) == "unimatch_box"
  assert lines[2].startswith("- the best on val, unimatch_box (chosen on these runs), "
                             "closes >= 50% of the gap: 62% [")
  assert lines[2].endswith("**established**") and len(lines) == 3
  # Judged as named: fixmatch_box's 38% and its whole interval lie below one half.
  assert plot_ablation.strong_view_markdown(records, best="fixmatch_box").splitlines()[
      2].endswith("**refuted**")
  assert plot_ablation.strong_view_markdown([_record("cowmix", 0, 0.5)]) == ""
  # The controls, where they ran, are paired with the column whose amount they match.
  controls = {"fixmatch_cow_box_area": [44.5, 45.5, 45.5, 47.5, 48.5],  # box + 0.5
              "unimatch_cow_always": [46.0, 48.0, 46.0, 49.0, 49.0],
              "unimatch_cow_complementary": [47.0, 49.0, 47.0, 50.0, 50.0]}  # always + 1
  records += [_record(m, s, v / 100) for m, values in controls.items()
              for s, v in enumerate(values)]
  lines = plot_ablation.strong_view_markdown(records).splitlines()
  assert any(line.startswith("- fixmatch_cow_box_area minus fixmatch_box: +0.50 +- 0.00")
             for line in lines)
  assert any(line.startswith("- unimatch_cow_complementary minus unimatch_cow_always: "
                             "+1.00 +- 0.00") for line in lines)
  assert not any("unimatch_cow_box_area" in line for line in lines)  # it did not run
  # The best of the five columns (complementary now, 66%), never a control.
  assert lines[-1].startswith("- the best on val, unimatch_cow_complementary (chosen on "
                              "these runs), closes >= 50% of the gap: 66%")


def test_the_best_strong_view_column_is_chosen_on_the_seeds_every_column_ran():
  """A column missing a seed is not ranked on other labelled subsets: by hand,
  fixmatch_box closes 52% over its five seeds but 40% over seeds 0-3, which
  fixmatch_cow ran (45%); on test, a chosen column without runs says so."""
  base, full = [40.0] * 5, [50.0] * 5
  columns = {"fixmatch_box": [44.0, 44.0, 44.0, 44.0, 50.0],
             "fixmatch_cow": [44.5, 44.5, 44.5, 44.5]}
  records = [_record(m, s, v / 100) for m, values in
             (("supervised", base), ("all_labels", full), *columns.items())
             for s, v in enumerate(values)]
  assert plot_ablation.gap_share(records, "fixmatch_box")["share"] == pytest.approx(0.52)
  assert plot_ablation.best_strong_view_column(records) == "fixmatch_cow"
  test_lines = plot_ablation.strong_view_markdown(records, best="unimatch_box").splitlines()
  assert test_lines[-1] == ("- the best on val, unimatch_box: no run here with the "
                            "baseline and full supervision on the same seed")


@pytest.mark.parametrize("differences", [[-1.0, -1.0, -1.0, -1.0, 0.5],
                                         [-2.0, -1.5, -0.3, -0.9, -1.1],
                                         [0.5, -0.2, 0.3, -0.1, 0.4]])
def test_a_paired_claim_is_refuted_on_the_tests_that_would_establish_its_opposite(
    differences):
  """The verdict is symmetric: a difference is refuted exactly when its negation is
  established (both one-sided p below 0.05). By hand, -1 -1 -1 -1 +0.5 stays open: of
  the 32 sign patterns of its negation, two reach its sum 3.5, p 1/16, though its
  bootstrap interval lies below 0."""
  zeros = dict.fromkeys(range(5), 0.0)
  ours = paired_stats.compare(dict(enumerate(differences)), zeros)
  negated = paired_stats.compare(zeros, dict(enumerate(differences)))
  assert ours["t_p_below"] == pytest.approx(negated["t_p"])
  assert ours["sign_flip_p_below"] == pytest.approx(negated["sign_flip_p"])
  opposite = {"established": "refuted", "refuted": "established", "open": "open"}
  assert plot_ablation.difference_verdict(ours) == opposite[
      plot_ablation.difference_verdict(negated)]
  if differences[-1] == 0.5:
    assert ours["sign_flip_p_below"] == pytest.approx(2 / 32) and ours["high"] < 0
    assert plot_ablation.difference_verdict(ours) == "open"


def test_a_later_results_file_says_which_runs_it_replaces(tmp_path, capsys):
  first, second = str(tmp_path / "first.json"), str(tmp_path / "second.json")
  ablation.save_results(first, {"runs": {"cowmix_seed0": _record("cowmix", 0, 0.4),
                                         "cowmix_seed1": _record("cowmix", 1, 0.5)}})
  ablation.save_results(second, {"runs": {"cowmix_seed1": _record("cowmix", 1, 0.6)}})
  merged = plot_ablation.merge_results([first, second])
  assert merged["runs"]["cowmix_seed1"]["miou"] == 0.6
  assert f"--results={second} replaces 1 run(s) of an earlier file: cowmix_seed1" in (
      capsys.readouterr().out)


def test_the_cpu_model_is_read_from_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                     "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2\n")
  assert ablation.cpu_model(str(cpuinfo)) == "AMD EPYC 7B13"
  missing = ablation.cpu_model(str(tmp_path / "absent"))
  assert missing == (platform.processor() or platform.machine())


def test_each_record_keeps_the_environment_it_was_made_in(tmp_path, monkeypatch):
  monkeypatch.setenv("LD_PRELOAD", "/lib/libtcmalloc_minimal.so.4")
  workdir = tmp_path / "supervised_seed0"
  workdir.mkdir()
  (workdir / "results.json").write_text(json.dumps(
      {"miou": 0.4, "per_class_iou": {"sky": 0.9}, "step": 2, "split": "validation"}))
  record = ablation.run_record(ablation.Run("supervised", 0), str(workdir))
  environment = record["environment"]
  assert environment["allocator"] == "/lib/libtcmalloc_minimal.so.4"
  assert environment["jax"] == importlib.metadata.version("jax")
  assert environment["jaxlib"] == importlib.metadata.version("jaxlib")
  assert environment["cpu_cores"] == str(os.cpu_count())


def test_swept_method_is_the_sweeps_own_and_one_key_on_two_methods_is_refused():
  ict = {"1.0": [dict(_record("ict", 0, 0.4), variant={"mask.ict_alpha": "1.0"})]}
  assert plot_ablation.swept_method(ict) == "ict"
  mixed = {"1": [dict(_record("ict", 0, 0.4), variant={"cons_weight": "1"}),
                 dict(_record("cowmix", 0, 0.4), variant={"cons_weight": "1"})]}
  with pytest.raises(ValueError, match="cowmix, ict"):
    plot_ablation.swept_method(mixed)


def test_variants_get_their_own_rows_paired_with_the_baseline(tmp_path):
  """--variants: an ICT diagnosis (no CowMix at all) gets one row per single change,
  its difference paired by seed with the baseline; --nopaper drops the paper column;
  the sweep chart is drawn for ICT's sweeps."""
  mious = {("supervised", ()): (0.42, 0.40), ("ict", ()): (0.39, 0.33),
           ("ict", (("cons_weight", "1"),)): (0.43, 0.38)}
  runs = {}
  for (method, variant), values in mious.items():
    for seed, miou in enumerate(values):
      run = ablation.Run(method, seed, variant)
      runs[run.name] = dict(_record(method, seed, miou, variant), variant=dict(variant),
                            per_class_iou={"road": miou, "sky": miou},
                            test_miou=miou - 0.05,
                            test_per_class_iou={"road": miou, "sky": miou})
  results = str(tmp_path / "results.json")
  ablation.save_results(results, {"runs": runs})
  markdown = tmp_path / "doc.md"
  markdown.write_text("<!-- d_table1:start -->\n<!-- d_table1:end -->\n"
                      "<!-- d_table1_test:start -->\n<!-- d_table1_test:end -->\n")
  plot_ablation.main([f"--results={results}", f"--output_dir={tmp_path}", "--prefix=d",
                      "--variants", "--nopaper", f"--update_markdown={markdown}",
                      "--markers=d_"])
  rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
          for line in markdown.read_text().splitlines() if line.startswith("| ")}
  headers = [line for line in markdown.read_text().splitlines()
             if line.startswith("| method |")]
  assert len(headers) == 2  # val and test
  assert not any("paper" in header for header in headers)
  column = rows["method"].index("minus baseline (paired) [95% CI]")
  for group, key in (("ict", ("ict", ())), ("ict [cons_weight=1]",
                                             ("ict", (("cons_weight", "1"),)))):
    differences = 100 * (np.array(mious[key]) - np.array(mious[("supervised", ())]))
    expected = f"{differences.mean():+.2f} +- {differences.std(ddof=1):.2f}"
    assert rows[group][column] == expected
  assert (tmp_path / "d_sweep.png").stat().st_size > 0


def test_grid_eta_sums_each_remaining_runs_method_mean_wall_time():
  """Each run to come costs its method's mean recorded wall time (whole runs, resumed
  attempts included), or every run's mean where its method has none yet."""
  results = {"runs": {
      "supervised_seed0": {"method": "supervised", "wall_seconds": 600.0},
      "supervised_seed1": {"method": "supervised", "wall_seconds": 1200.0},
      "cowmix_seed0": {"method": "cowmix", "wall_seconds": 2400.0}}}
  to_come = ablation.plan_runs(["supervised", "cowmix", "cowout"], [0, 1, 2])
  # To come: supervised seed 2 (900 s), cowmix seeds 1-2 (2 x 2400 s), cowout seeds
  # 0-2 (3 x the mean of all, 1400 s): 9900 s = 165 min.
  assert ablation.grid_eta_text(to_come, results) == ", grid ETA 165 min"
  assert ablation.grid_eta_text(to_come, {"runs": {}}) == ""
  done = {"runs": {r.name: {"method": r.method, "wall_seconds": 60.0} for r in to_come}}
  assert ablation.grid_eta_text(to_come, done) == ""


def test_a_resumed_run_counts_whole_in_the_grid_eta(tmp_path, capsys):
  """The ETA printed before the next run uses the finished run's whole wall time (an
  interrupted attempt of 10 min and a resumed one of 2 min: 12 min), not only its last
  attempt's."""
  class Slow(FakeTraining):
    def __call__(self, command, workdir, stop):
      code, _ = super().__call__(command, workdir, stop)
      return code, 600.0 if code else 120.0

  runs = ablation.plan_runs(["supervised"], [0, 1])
  results_path = str(tmp_path / "results.json")
  ablation.run_grid(runs, "c.py", str(tmp_path), results_path, [], ablation.StopRequest(),
                    Slow(interrupt_at="supervised_seed0"))
  capsys.readouterr()
  ablation.run_grid(runs, "c.py", str(tmp_path), results_path, [], ablation.StopRequest(),
                    Slow())
  out = capsys.readouterr().out
  assert json.loads(open(results_path).read())["runs"]["supervised_seed0"]["wall_seconds"] == 720.0
  assert "[2/2] supervised_seed1: training" in out and "grid ETA 12 min)" in out
