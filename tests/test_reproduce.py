"""cowmix_jax/experiments/reproduce.py: comparing a rerun's history with a record."""

import json

import pytest

from cowmix_jax.experiments import reproduce


def test_values_are_compared_at_the_places_they_were_recorded_with():
  assert reproduce.recorded_digits(0.42829999999999996) == 4  # typed as 0.4283
  assert reproduce.recorded_digits(0.41798795749853296) == 17
  recorded = {"184": 0.2029, "368": 0.31173285473530216, "552": 0.5}
  rerun = {"184": 0.20294, "368": 0.31173285473530216, "552": 0.5001}
  result = reproduce.compare_histories(recorded, rerun)
  # 0.20294 rounds to the recorded 0.2029; 0.5001 rounded to 1 place is 0.5 as well.
  assert result == {"steps": 3, "identical": 3, "max_difference": pytest.approx(1e-4),
                    "missing": 0}
  rerun["368"] += 1e-9
  del rerun["552"]
  result = reproduce.compare_histories(recorded, rerun)
  assert result["identical"] == 1 and result["missing"] == 1
  assert result["max_difference"] == pytest.approx(4e-5)


def test_the_tool_exits_1_when_a_run_differs(tmp_path, capsys):
  def results(history, miou):
    return {"runs": {"supervised_seed0": {"teacher_history": history, "miou": miou}}}

  recorded, same, other = (tmp_path / name for name in ("a.json", "b.json", "c.json"))
  recorded.write_text(json.dumps(results({"1": 0.2517, "2": 0.4283}, 0.4283)))
  same.write_text(json.dumps(results({"1": 0.2517, "2": 0.4283}, 0.4283)))
  other.write_text(json.dumps(results({"1": 0.2517, "2": 0.4183}, 0.4183)))
  assert reproduce.main([f"--recorded={recorded}", f"--rerun={same}"]) == 0
  assert "2/2 evaluations identical" in capsys.readouterr().out
  assert reproduce.main([f"--recorded={recorded}", f"--rerun={other}"]) == 1
  assert "1/2 evaluations identical, largest difference 1.0000 points" in (
      capsys.readouterr().out)


def test_a_differing_run_names_what_changed_in_its_environment():
  environment = {"cpu": "AMD EPYC 7B13", "jax": "0.10.2", "jaxlib": "0.10.2",
                 "allocator": ""}
  old = {"environment": environment}
  assert reproduce.environment_difference(old, {"environment": dict(environment)}) == (
      "same recorded environment")
  new = {"environment": {**environment, "cpu": "AMD EPYC 9B14", "allocator": "tc.so"}}
  assert reproduce.environment_difference(old, new) == (
      "allocator: '' -> 'tc.so'; cpu: 'AMD EPYC 7B13' -> 'AMD EPYC 9B14'")
  assert reproduce.environment_difference({}, new) == (
      "environment not recorded for the recorded run")
  assert reproduce.environment_difference({}, {}) == (
      "environment not recorded for either run")


def test_the_markdown_table_has_one_row_per_shared_run(tmp_path, capsys):
  def record(history, miou, finished):
    return {"teacher_history": history, "miou": miou, "finished": finished}

  recorded = {"runs": {"supervised_seed0": record({"1": 0.2517, "2": 0.4283}, 0.4283,
                                                  "2026-11-30T15:43:28"),
                       "cowmix_seed0": record({"1": 0.3}, 0.3, "2026-11-30T16:23:59")}}
  rerun = {"runs": {"supervised_seed0": record({"1": 0.2517, "2": 0.4183}, 0.4183,
                                               "2026-12-05T08:22:36")}}
  table = reproduce.markdown_table(recorded, rerun).splitlines()
  assert len(table) == 3  # header, rule, the one run both files have
  assert table[2] == "| supervised_seed0 | 2026-11-30 15:43 | 1 of 2 | 1.00 | 42.83 / 41.83 |"
  paths = tmp_path / "a.json", tmp_path / "b.json"
  for path, results in zip(paths, (recorded, rerun)):
    path.write_text(json.dumps(results))
  assert reproduce.main([f"--recorded={paths[0]}", f"--rerun={paths[1]}", "--markdown"]) == 1
  assert capsys.readouterr().out.splitlines()[2] == table[2]
