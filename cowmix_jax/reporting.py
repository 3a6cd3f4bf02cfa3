"""TensorBoard, console and ``metrics.jsonl`` reporting with clu: scalars and pictures of
what the method does.

Only process 0 writes files (event files and ``metrics.jsonl``); the other processes only
log. Paths go through ``etils.epath``, so a workdir may be a ``gs://`` URL.
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from clu import metric_writers, periodic_actions
from etils import epath
from PIL import Image

from cowmix_jax import metrics_file
from cowmix_jax.conventions import IGNORE_LABEL
from cowmix_jax.normalisation import to_unit_rgb

IGNORE_COLOUR = (255, 255, 255)


class JsonlWriter(metric_writers.MetricWriter):
  """Appends each ``write_scalars(step, scalars)`` to ``directory/metrics.jsonl`` as one
  line ``{"step": step, **scalars}``; everything else (images, ...) is not kept.

  The file is append-only: a run resumed from a checkpoint writes the steps after it
  again, and :func:`cowmix_jax.metrics_file.read_metrics` keeps the last value of each
  name at each step.
  """

  def __init__(self, directory: str):
    self._path = epath.Path(directory) / metrics_file.METRICS_FILE

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {"step": int(step), **{name: float(value) for name, value in scalars.items()}}
    with self._path.open("a") as f:  # tf.io.gfile appends on gs:// too
      f.write(json.dumps(record) + "\n")

  def flush(self) -> None:
    pass  # every write is on disk when write_scalars returns

  def close(self) -> None:
    pass

  def write_summaries(self, step, values, metadata=None) -> None:
    del step, values, metadata

  def write_images(self, step, images) -> None:
    del step, images

  def write_videos(self, step, videos) -> None:
    del step, videos

  def write_audios(self, step, audios, *, sample_rate) -> None:
    del step, audios, sample_rate

  def write_texts(self, step, texts) -> None:
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    del step, arrays, num_buckets

  def write_hparams(self, hparams) -> None:
    del hparams


def make_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard files and ``metrics.jsonl`` in ``workdir`` plus the log (process 0);
  just the log elsewhere."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(just_logging=True)
  return metric_writers.MultiWriter([
      metric_writers.create_default_writer(workdir), JsonlWriter(workdir)])


class ReportProgress(periodic_actions.ReportProgress):
  """clu's progress report every ``every_steps`` steps and at the last: ``steps_per_sec``
  and ``uptime`` to the writer, the rate, percentage and ETA to the log. ``rate`` keeps
  the last rate for the step's log line (None before the first report)."""

  rate: float | None = None

  def __init__(self, *, num_train_steps: int, every_steps: int, writer, start_step: int):
    super().__init__(num_train_steps=num_train_steps, every_steps=every_steps,
                     every_secs=None, writer=writer)
    self(start_step)  # the clock starts at the first step of this (maybe resumed) run

  def _apply(self, step: int, t: float) -> None:
    self.rate = (step - self._previous_step) / (t - self._previous_time)
    super()._apply(step, t)


def default_palette(num_classes: int) -> np.ndarray:
  """Distinct colours (evenly spaced hues) for datasets that give none: uint8 ``[C, 3]``."""
  return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(i / num_classes, 0.7, 0.95)]
                   for i in range(num_classes)], np.uint8)


def colourise(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
  """Class ids ``[N, H, W]`` (255 = ignore, shown white) -> uint8 ``[N, H, W, 3]``."""
  table = np.zeros((256, 3), np.uint8)
  table[:] = IGNORE_COLOUR
  table[:len(palette)] = np.asarray(palette, np.uint8)
  return table[np.asarray(labels).astype(np.int64).clip(0, IGNORE_LABEL)]


def denormalise(images: np.ndarray, normalisation: str) -> np.ndarray:
  """Model inputs ``[N, H, W, 3]`` -> displayable uint8 RGB (inverse of the pipeline's
  normalisation)."""
  rgb = to_unit_rgb(np.asarray(images, np.float32), normalisation)
  return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def _grey(values: np.ndarray) -> np.ndarray:
  return np.repeat((np.clip(values, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _unlabelled_pictures(visuals: dict[str, np.ndarray], palette, normalisation: str,
                         n: int, suffix: str = "") -> dict[str, np.ndarray]:
  """The student's input, target, prediction, loss mask (and mask) of one view."""
  out = {
      f"unlabelled/student_input{suffix}": denormalise(visuals["student_input"][:n],
                                                       normalisation),
      f"unlabelled/teacher_target{suffix}": colourise(visuals["teacher_target"][:n], palette),
      f"unlabelled/student_prediction{suffix}": colourise(visuals["student_prediction"][:n],
                                                          palette),
      f"unlabelled/loss_mask{suffix}": _grey(visuals["loss_mask"][:n]),
  }
  mask = visuals.get("mask")
  if mask is not None and mask.shape == visuals["loss_mask"].shape:
    out[f"unlabelled/mask{suffix}"] = _grey(mask[:n])
  return out


def visual_summaries(visuals: dict[str, np.ndarray], batch: dict[str, np.ndarray],
                     palette: Sequence[Sequence[int]], normalisation: str,
                     max_images: int = 4) -> dict[str, np.ndarray]:
  """TensorBoard images (uint8 ``[N, H, W, 3]``) from ``steps.make_visualise_fn``'s
  output: the labelled images, their ground truth and the teacher's prediction; the
  unlabelled images, the masks, the student's (mixed) inputs, the teacher's targets and
  the student's predictions, coloured with the dataset palette. Visuals with a views
  axis (fixmatch, unimatch: ``student_input [N, V, H, W, 3]``) give one set per view,
  named ``..._view1``, ``..._view2``: the strong views, their masks, pseudo-labels and
  the pixels above the threshold (``loss_mask``); ``unlabelled/image`` is the weak view."""
  n = max_images
  out = {
      "labelled/image": denormalise(batch["image"][:n], normalisation),
      "labelled/ground_truth": colourise(visuals["label"][:n], palette),
      "labelled/teacher_prediction": colourise(visuals["teacher_prediction"][:n], palette),
  }
  if "student_input" not in visuals:
    return out
  out["unlabelled/image"] = denormalise(batch["unlabelled_image"][:n], normalisation)
  unlabelled = {k: v for k, v in visuals.items() if k not in ("label", "teacher_prediction")}
  if visuals["student_input"].ndim == 4:
    out.update(_unlabelled_pictures(unlabelled, palette, normalisation, n))
    return out
  for view in range(visuals["student_input"].shape[1]):
    one = {k: v[:, view] for k, v in unlabelled.items()}
    out.update(_unlabelled_pictures(one, palette, normalisation, n, f"_view{view + 1}"))
  return out


def save_label_png(path: str, labels: np.ndarray,
                   palette: Sequence[Sequence[int]] | None) -> None:
  """Class ids ``[H, W]`` as a palette PNG: pixel values are the ids, viewers show the
  palette's colours."""
  height, width = labels.shape
  image = Image.frombytes("P", (int(width), int(height)),
                          np.ascontiguousarray(labels, np.uint8).tobytes())
  flat = [int(v) for colour in (palette if palette is not None else []) for v in colour]
  image.putpalette(flat + [0] * (768 - len(flat)))
  image.save(path)


def palette_of(builder_metadata, num_classes: int) -> np.ndarray:
  colours: Sequence[Sequence[int]] | None = builder_metadata.get("class_colours")
  return np.asarray(colours, np.uint8) if colours else default_palette(num_classes)


CLASSES_FILE = "classes.json"


def write_classes(workdir: str, names: Sequence[str], colours: Sequence | None) -> None:
  """Writes the run's class list, ``workdir/classes.json``: ``{"names": [...],
  "colours": [[r, g, b], ...] or null}``, so that tools need the run only, not its
  dataset."""
  (epath.Path(workdir) / CLASSES_FILE).write_text(json.dumps(
      {"names": list(names), "colours": None if colours is None else
       [list(map(int, c)) for c in colours]}, indent=1))


def read_classes(workdir: str) -> tuple[list[str], list | None] | None:
  """``(names, colours)`` from ``workdir/classes.json``; None when the run has none."""
  path = epath.Path(workdir) / CLASSES_FILE
  if not path.exists():
    return None
  try:
    saved = json.loads(path.read_text())
    return list(saved["names"]), saved.get("colours")
  except (ValueError, KeyError, TypeError) as error:
    raise ValueError(f"{path}: not a class list ({error}); expected {{\"names\": [...], "
                     f"\"colours\": [...]}}") from None
