"""cowmix_jax/experiments/plot_curves.py: learning curves of ablation runs."""

import numpy as np
import pytest

from cowmix_jax.experiments import plot_curves


def _record(group, seed, history, method=None):
  return {"group": group, "method": method or group, "seed": seed,
          "miou": list(history.values())[-1], "variant": {},
          "teacher_history": {str(k): v for k, v in history.items()}}


def test_history_is_in_step_order_not_text_order():
  # As stored: keys sorted as text, so "1000" comes before "500".
  record = {"teacher_history": {"1000": 0.30, "1500": 0.35, "500": 0.20}}
  steps, miou = plot_curves.history_arrays(record)
  np.testing.assert_array_equal(steps, [500, 1000, 1500])
  np.testing.assert_allclose(miou, [20.0, 30.0, 35.0])


def test_mean_curve_averages_seeds_at_their_common_steps():
  a = _record("cowmix", 0, {500: 0.20, 1000: 0.30, 1500: 0.40})
  b = _record("cowmix", 1, {500: 0.10, 1000: 0.26})  # stopped early
  steps, mean, std = plot_curves.mean_curve([a, b])
  np.testing.assert_array_equal(steps, [500, 1000])
  np.testing.assert_allclose(mean, [15.0, 28.0])
  np.testing.assert_allclose(std, [np.std([20, 10], ddof=1), np.std([30, 26], ddof=1)])


def test_mean_curve_of_one_run_is_the_run_with_zero_spread():
  steps, mean, std = plot_curves.mean_curve([_record("aug", 0, {500: 0.25, 1000: 0.5})])
  np.testing.assert_allclose(mean, [25.0, 50.0])
  np.testing.assert_array_equal(std, [0.0, 0.0])


def test_mean_curve_without_a_common_step_names_the_runs():
  a = _record("cowmix", 0, {500: 0.2})
  b = _record("cowmix", 1, {1000: 0.3})
  with pytest.raises(ValueError, match="cowmix seed 0, cowmix seed 1"):
    plot_curves.mean_curve([a, b])


def test_select_records_filters_seeds_and_keeps_table_order():
  runs = {f"{g}_seed{s}": _record(g, s, {500: 0.3 + s / 100})
          for g in ("all_labels", "cowmix", "supervised") for s in (0, 1)}
  runs["ict_seed0"] = {"group": "ict", "method": "ict", "seed": 0, "miou": 0.3}  # no history
  selected = plot_curves.select_records({"runs": runs}, None, [1])
  assert list(selected) == ["supervised", "cowmix", "all_labels"]
  assert all(r["seed"] == 1 for records in selected.values() for r in records)
  chosen = plot_curves.select_records({"runs": runs}, ["cowmix", "supervised"], None)
  assert list(chosen) == ["cowmix", "supervised"] and len(chosen["cowmix"]) == 2
  with pytest.raises(ValueError, match=r"\['ict'\]"):
    plot_curves.select_records({"runs": runs}, ["ict"], None)
