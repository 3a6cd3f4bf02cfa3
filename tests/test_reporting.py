"""Tests of cowmix_jax/reporting.py and of what training writes for TensorBoard."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cowmix_jax import metrics_file, reporting, train
from cowmix_jax.data import pipeline, splits


def test_colourise_by_hand():
  palette = [(10, 20, 30), (200, 100, 0)]
  out = reporting.colourise(np.array([[[0, 1, 255]]]), palette)
  np.testing.assert_array_equal(out[0, 0], [(10, 20, 30), (200, 100, 0), (255, 255, 255)])
  assert out.dtype == np.uint8


@pytest.mark.parametrize("normalisation", sorted(pipeline.NORMALISATIONS))
def test_denormalise_inverts_the_pipeline(normalisation):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 5, 7, 3)).astype(np.float32)
  normalised = pipeline.normalise(tf.constant(images), normalisation).numpy()
  np.testing.assert_array_equal(reporting.denormalise(normalised, normalisation), images)


def test_default_palette_is_distinct():
  palette = reporting.default_palette(12)
  assert palette.shape == (12, 3) and len({tuple(c) for c in palette}) == 12


def _events(workdir):
  """``{tag: [(step, value)]}`` of scalars and ``{tag: [(step, image)]}`` of images."""
  scalars, images = {}, {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        plugin = value.metadata.plugin_data.plugin_name
        tensor = tf.make_ndarray(value.tensor)
        if plugin == "scalars":
          scalars.setdefault(value.tag, []).append((event.step, float(tensor)))
        elif plugin == "images":
          decoded = [tf.io.decode_png(encoded).numpy() for encoded in tensor[2:]]
          images.setdefault(value.tag, []).append((event.step, decoded))
  return scalars, images


def test_training_writes_scalars_and_pictures(tiny_config, tmp_path):
  tiny_config.method = "cowmix"
  tiny_config.data.data_dir = str(tmp_path / "tfds")
  tiny_config.num_train_steps = 4
  tiny_config.log_every = 2
  tiny_config.eval_every = 2
  tiny_config.image_every = 2
  results = train.train_and_evaluate(tiny_config, str(tmp_path / "work"))
  scalars, images = _events(str(tmp_path / "work"))
  for tag in ("loss", "supervised_loss", "consistency_loss", "confidence", "learning_rate",
              "steps_per_sec", "teacher_miou", "student_miou"):
    assert [step for step, _ in scalars[tag]] == [2, 4], tag
  assert scalars["teacher_miou"][-1][1] == pytest.approx(results["miou"], abs=1e-6)
  assert scalars["student_miou"][-1][1] == pytest.approx(results["student_miou"], abs=1e-6)
  assert scalars["learning_rate"][0][1] == pytest.approx(tiny_config.learning_rate)
  # metrics.jsonl holds every scalar of the event files (float32 there), step by step.
  logged = metrics_file.read_metrics(str(tmp_path / "work"))
  for tag, values in scalars.items():
    for step, value in values:
      assert logged[step][tag] == pytest.approx(value, rel=1e-6), (tag, step)
  expected = ["labelled/image", "labelled/ground_truth", "labelled/teacher_prediction",
              "unlabelled/image", "unlabelled/mask", "unlabelled/student_input",
              "unlabelled/teacher_target", "unlabelled/student_prediction",
              "unlabelled/loss_mask"]
  assert sorted(images) == sorted(expected)
  for tag in expected:
    steps = [step for step, _ in images[tag]]
    assert steps == [2, 4], tag
    pictures = images[tag][0][1]
    assert len(pictures) == 4 and pictures[0].shape == (32, 32, 3), tag
  # The mask is a cow mask of 0/1 pixels, about half ones (p = 0.5).
  mask = np.stack(images["unlabelled/mask"][0][1])[..., 0]
  assert set(np.unique(mask)) <= {0, 255} and 0.2 < np.mean(mask == 255) < 0.8
  # Ground-truth pictures use the dataset palette (synthetic: background is black).
  truth = np.stack(images["labelled/ground_truth"][0][1]).reshape(-1, 3)
  from cowmix_jax.data import synthetic
  assert {tuple(c) for c in truth} <= {tuple(c) for c in synthetic.CLASS_COLOURS}


def test_metrics_and_labelled_ids_go_through_a_url_workdir(fake_bucket):
  (fake_bucket / "run").mkdir()  # train.py makes the workdir first
  writer = reporting.JsonlWriter("gs://bucket/run")
  writer.write_scalars(5, {"loss": np.float32(0.5), "teacher_miou": 0.25})
  writer.write_scalars(5, {"loss": 0.4})  # a resumed run writes the step again
  writer.close()
  lines = (fake_bucket / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 5, "loss": 0.5, "teacher_miou": 0.25}, {"step": 5, "loss": 0.4}]
  assert metrics_file.read_metrics("gs://bucket/run") == {5: {"loss": 0.4,
                                                              "teacher_miou": 0.25}}
  splits.write_id_file("gs://bucket/run/labelled_ids.json", ["a", "b"], seed=1)
  assert splits.read_id_file("gs://bucket/run/labelled_ids.json") == ["a", "b"]
  assert (fake_bucket / "run" / "labelled_ids.json").exists()


class _Scalars:
  """A writer that keeps what it is given."""

  def __init__(self):
    self.written = []

  def write_scalars(self, step, scalars):
    self.written.append((step, dict(scalars)))


def test_progress_reports_the_rate_of_each_interval_from_the_start_step():
  """A run resumed at step 10, logging every 5 steps of 10: reports at 15 and 20 only,
  each with the steps done since the last report over the seconds they took."""
  writer = _Scalars()
  progress = reporting.ReportProgress(num_train_steps=20, every_steps=5, writer=writer,
                                      start_step=10)
  clock = progress._previous_time  # when the run (re)started
  triggered = []
  for step in range(11, 21):
    clock += 0.5 if step <= 15 else 0.25  # 2 steps/s, then 4
    if progress(step, clock):
      triggered.append(step)
  assert triggered == [15, 20]
  rates = [scalars["steps_per_sec"] for _, scalars in writer.written if "steps_per_sec" in scalars]
  assert rates == pytest.approx([5 / 2.5, 5 / 1.25])
  assert progress.rate == pytest.approx(4.0)
