"""Reading ``workdir/metrics.jsonl``: every scalar a run logged, one JSON line per write
(``{"step": 500, "loss": 0.41, ...}``, ``{"step": 500, "teacher_miou": 0.28, ...}``).

train.py writes it (``reporting.JsonlWriter``, process 0); tools read it here instead of
parsing logs. Light on purpose (no JAX, no TensorFlow): the experiment runner imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from absl import logging
from etils import epath

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """``{step: {name: value}}`` from ``workdir/metrics.jsonl``, steps in order; a name
  written twice at one step (a resumed run) keeps its last value. Empty when there is
  no file."""
  path = epath.Path(workdir) / METRICS_FILE
  by_step: dict[int, dict[str, float]] = {}
  if not path.exists():
    return by_step
  for record in _json_lines(path):
    step = record.pop("step")
    by_step.setdefault(step, {}).update(record)
  return dict(sorted(by_step.items()))


def _json_lines(path: epath.Path) -> Iterator[dict[str, Any]]:
  """The records of the file; a line cut short by a killed process is skipped (with a
  warning naming it), the rest are kept."""
  for number, line in enumerate(path.read_text().splitlines(), 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      if line.strip():
        logging.warning("%s:%d: skipping a line that is not JSON (a write cut short?): %r",
                        path, number, line[:80])
      continue
    if isinstance(record, dict) and isinstance(record.get("step"), int):
      yield record


def metric_history(workdir: str, name: str) -> dict[int, float]:
  """``{step: value}`` of one scalar (e.g. ``teacher_miou``) over the run, finite
  values only."""
  return {step: values[name] for step, values in read_metrics(workdir).items()
          if name in values and math.isfinite(values[name])}
