"""Does a rerun reproduce a recorded run? Compares the teacher's evaluation histories.

python -m cowmix_jax.experiments.reproduce --recorded=docs/camvid_lite0_results.json \\
    --rerun=runs/camvid_lite0_rerun/results.json

Runs are deterministic functions of their config and seed (the same code, libraries and
machine give the same bits), so a rerun of a run recorded by
``cowmix_jax.experiments.ablation`` must log the same teacher mIoU at every evaluation.
For every run in ``--rerun`` that ``--recorded`` also has, prints how many of its
evaluations are identical, the largest difference, and the final mIoU of both; for a
run that differs, what differs between the two records' ``environment`` (CPU model,
JAX and jaxlib versions, allocator). Exits with status 1 when some run differs (values
recorded with fewer digits are compared at the digits they have).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from cowmix_jax import cli
from cowmix_jax.experiments import ablation


def recorded_digits(value: float) -> int:
  """The decimal places ``value`` was written with (transcribed records keep 4)."""
  text = repr(float(value))
  if "e" in text or "." not in text:
    return 17
  decimals = text.split(".")[1]
  # repr of a value typed with 4 places can carry float noise (0.42829999999999996).
  for places in range(1, 8):
    if abs(round(value, places) - value) < 1e-12:
      return places
  return len(decimals)


def compare_histories(recorded: dict[str, float], rerun: dict[str, float]) -> dict:
  """``{steps, identical, max_difference, missing}`` over the evaluation steps of
  ``recorded`` (``{step: mIoU fraction}``): a rerun value is identical when it equals
  the recorded one at the recorded value's decimal places; ``missing`` counts steps the
  rerun did not evaluate."""
  identical, largest, missing = 0, 0.0, 0
  for step, value in recorded.items():
    if step not in rerun:
      missing += 1
      continue
    places = recorded_digits(value)
    other = rerun[step] if places >= 17 else round(rerun[step], places)
    identical += other == value
    largest = max(largest, abs(rerun[step] - value))
  return {"steps": len(recorded), "identical": identical, "max_difference": largest,
          "missing": missing}


def environment_difference(recorded: dict, rerun: dict) -> str:
  """What differs between the environments two records were made in (``run_environment``
  of the runner), as ``'key: recorded -> rerun'`` pairs; says so when either record has
  none (records made before the runner kept one)."""
  old, new = recorded.get("environment"), rerun.get("environment")
  if old is None or new is None:
    return "environment not recorded for " + (
        "either run" if old is None and new is None else
        "the recorded run" if old is None else "the rerun")
  changed = [f"{key}: {old.get(key, '')!r} -> {new.get(key, '')!r}"
             for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
  return "; ".join(changed) or "same recorded environment"


def comparisons(recorded: dict, rerun: dict) -> list[dict]:
  """For each run of ``rerun`` that ``recorded`` also has (in the runner's order):
  ``compare_histories`` of the two plus ``name``, ``same`` (every recorded evaluation
  identical), when the recorded run finished, both final ``miou``, and
  ``environment_difference``."""
  rows = []
  for name in sorted(rerun["runs"], key=ablation.natural_key):
    if name not in recorded["runs"]:
      continue
    old, new = recorded["runs"][name], rerun["runs"][name]
    comparison = compare_histories(old.get("teacher_history", {}),
                                   new.get("teacher_history", {}))
    rows.append({**comparison, "name": name,
                 "same": comparison["identical"] == comparison["steps"] > 0,
                 "recorded_finished": old.get("finished", ""),
                 "recorded_miou": old["miou"], "rerun_miou": new["miou"],
                 "environment": environment_difference(old, new)})
  return rows


def report(recorded: dict, rerun: dict) -> tuple[list[str], bool]:
  """One line per run of ``rerun`` that ``recorded`` also has; whether all reproduce."""
  rows = comparisons(recorded, rerun)
  lines = [
      f"{row['name']}: {row['identical']}/{row['steps']} evaluations identical, "
      f"largest difference {100 * row['max_difference']:.4f} points; final "
      f"{100 * row['recorded_miou']:.2f} recorded, {100 * row['rerun_miou']:.2f} rerun"
      + ("" if row["same"] else f" (DIFFERS; {row['environment']})") for row in rows]
  return lines, all(row["same"] for row in rows)


def markdown_table(recorded: dict, rerun: dict) -> str:
  """The comparison as a Markdown table, one row per run in the order the runs were
  recorded: run, when it was recorded, evaluations identical, largest difference
  (points), final mIoU recorded / rerun."""
  lines = ["| run | recorded | evaluations identical | largest difference (points) "
           "| final mIoU, recorded / rerun |", "|---|---|---|---|---|"]
  for row in sorted(comparisons(recorded, rerun), key=lambda row: row["recorded_finished"]):
    lines.append(f"| {row['name']} | {row['recorded_finished'][:16].replace('T', ' ')} | "
                 f"{row['identical']} of {row['steps']} | "
                 f"{100 * row['max_difference']:.2f} | "
                 f"{100 * row['recorded_miou']:.2f} / {100 * row['rerun_miou']:.2f} |")
  return "\n".join(lines)


FLAGS = cli.new_flags()
flags.DEFINE_string("recorded", None, "the results file of the original runs",
                    flag_values=FLAGS)
flags.DEFINE_string("rerun", None, "the results file of the reruns", flag_values=FLAGS)
flags.DEFINE_bool("markdown", False, "print the comparison as a Markdown table (the exit "
                  "status is the same)", flag_values=FLAGS)
for _name in ("recorded", "rerun"):
  flags.mark_flag_as_required(_name, flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
  cli.parse(FLAGS, argv, __doc__)
  recorded, rerun = (ablation.load_results(path) for path in (FLAGS.recorded, FLAGS.rerun))
  lines, all_same = report(recorded, rerun)
  if not lines:
    print(f"No run of {FLAGS.rerun} is in {FLAGS.recorded}.")
    return 1
  print(markdown_table(recorded, rerun) if FLAGS.markdown else "\n".join(lines))
  return 0 if all_same else 1


if __name__ == "__main__":
  cli.run(main)
