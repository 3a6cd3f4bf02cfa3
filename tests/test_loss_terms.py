"""The loss terms of a run, averaged over windows of its steps, against hand-worked means."""

import json

import pytest

from cowmix_jax.experiments import loss_terms


def _write_run(path, rows, cons_weight=10.0):
  path.mkdir()
  (path / "config.json").write_text(json.dumps({"cons_weight": cons_weight}))
  with open(path / "metrics.jsonl", "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def test_window_means_split_the_steps_into_equal_spans():
  by_step = {100: {"a": 1.0}, 200: {"a": 3.0}, 250: {"b": 9.0},  # 250 lacks "a": ignored
             300: {"a": 5.0}, 400: {"a": 7.0}}
  rows = loss_terms.window_means(by_step, ["a"], windows=2)
  assert rows == [{"first": 100, "last": 200, "a": 2.0}, {"first": 300, "last": 400, "a": 6.0}]
  # With more windows than steps the empty windows are left out.
  assert [r["first"] for r in loss_terms.window_means(by_step, ["a"], windows=8)] == [
      100, 200, 300, 400]
  assert loss_terms.window_means(by_step, ["missing"], windows=2) == []


def test_loss_terms_weigh_the_consistency_loss_by_the_runs_cons_weight(tmp_path):
  run = tmp_path / "cowmix_seed0"
  _write_run(run, [
      {"step": 10, "supervised_loss": 0.4, "consistency_loss": 0.02, "confidence": 0.2},
      {"step": 10, "teacher_miou": 0.3},  # an evaluation line at the same step
      {"step": 20, "supervised_loss": 0.2, "consistency_loss": 0.06, "confidence": 0.6},
  ], cons_weight=3.0)
  (first, second) = loss_terms.loss_terms(str(run), windows=2)
  assert first["weighted_consistency"] == pytest.approx(3 * 0.02)
  assert first["consistency_share"] == pytest.approx(0.06 / (0.4 + 0.06))
  assert second["weighted_consistency"] == pytest.approx(3 * 0.06)
  assert second["consistency_share"] == pytest.approx(0.18 / (0.2 + 0.18))
  table = loss_terms.format_rows("cowmix_seed0", [first, second]).splitlines()
  assert table[3] == "| 10-10 | 0.400 | 0.060 | 0.200 | 13% |"


def test_a_run_without_loss_terms_or_config_is_named(tmp_path):
  run = tmp_path / "evaluated_only"
  _write_run(run, [{"step": 10, "teacher_miou": 0.3}])
  with pytest.raises(SystemExit, match="evaluated_only.*no steps logging supervised_loss"):
    loss_terms.loss_terms(str(run), windows=2)
  with pytest.raises(SystemExit, match="config.json does not exist"):
    loss_terms.loss_terms(str(tmp_path / "missing"), windows=2)


def test_strong_view_methods_log_their_unlabelled_losses_already_weighted(tmp_path):
  """fixmatch and unimatch log the weighted sum of their unlabelled losses: cons_weight
  (a mean-teacher key) does not multiply it."""
  run = tmp_path / "unimatch_seed0"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"cons_weight": 10.0, "method": "unimatch"}))
  (run / "metrics.jsonl").write_text(json.dumps(
      {"step": 5, "supervised_loss": 0.3, "consistency_loss": 0.1, "confidence": 0.5}) + "\n")
  (row,) = loss_terms.loss_terms(str(run), windows=1)
  assert row["weighted_consistency"] == pytest.approx(0.1)
  assert row["consistency_share"] == pytest.approx(0.1 / 0.4)
