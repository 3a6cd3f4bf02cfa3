"""Distance to a mask boundary against brute force, and the binning against hand-worked
sums; the whole tool on a tiny trained run against a direct computation."""

import itertools
import math

import numpy as np
import pytest

from cowmix_jax.experiments import edge_consistency


def _brute_force_distance(mask):
  ones = mask >= 0.5
  height, width = ones.shape
  out = np.full(ones.shape, np.inf)
  for y, x in itertools.product(range(height), range(width)):
    for v, u in itertools.product(range(height), range(width)):
      if ones[v, u] != ones[y, x]:
        out[y, x] = min(out[y, x], math.hypot(v - y, u - x))
  return out


def test_distance_to_other_side_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(5):
    mask = (rng.random((7, 9)) < rng.uniform(0.1, 0.9)).astype(np.float32)
    np.testing.assert_allclose(edge_consistency.distance_to_other_side(mask),
                               _brute_force_distance(mask))


def test_a_half_split_mask_counts_columns_from_the_boundary():
  mask = np.zeros((3, 6))
  mask[:, 3:] = 1
  expected = np.array([3, 2, 1, 1, 2, 3], float)  # the boundary lies between columns 2, 3
  np.testing.assert_array_equal(edge_consistency.distance_to_other_side(mask),
                                np.tile(expected, (3, 1)))
  assert np.isinf(edge_consistency.distance_to_other_side(np.ones((3, 3)))).all()


def test_bin_errors_weighs_pixels_by_the_loss_mask():
  distance = np.array([1.0, 1.0, 2.5, 6.0, np.inf, 1.4])
  error = np.array([0.4, 0.2, 0.1, 0.1, 0.05, 9.0])
  weight = np.array([1, 1, 1, 1, 1, 0])  # the last pixel is outside the loss
  rows = edge_consistency.bin_errors(distance, error, weight, edges=(1, 2, 5, math.inf))
  total = 0.4 + 0.2 + 0.1 + 0.1 + 0.05
  assert [r["bin"] for r in rows] == ["[1, 2)", "[2, 5)", "[5, inf)", "no boundary"]
  assert [r["pixel_share"] for r in rows] == pytest.approx([0.4, 0.2, 0.2, 0.2])
  assert [r["mean_error"] for r in rows] == pytest.approx([0.3, 0.1, 0.1, 0.05])
  assert [r["error_share"] for r in rows] == pytest.approx(
      [0.6 / total, 0.1 / total, 0.1 / total, 0.05 / total])
  with pytest.raises(ValueError, match="no pixel carries any weight"):
    edge_consistency.bin_errors(distance, error, np.zeros(6))


def test_edge_table_of_a_trained_run_matches_a_direct_computation(trained):
  import jax

  from cowmix_jax import models, sharding
  from cowmix_jax.data import builders
  from cowmix_jax.evaluate import restore_variables

  config, workdir, _ = trained
  rows, mean_error, clean_error = edge_consistency.edge_table(workdir, "train", 6, draws=1)

  # The same draw by hand: numpy mixing, softmax and squared distance.
  builder = builders.prepare(config.data)
  images = edge_consistency.first_images(config, builder, "train", 6)
  draws = edge_consistency.mixing.make_perturbation(config).sample(
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 0), images)
  mask, partner = np.asarray(draws["mask"])[..., None], np.asarray(draws["partner"])
  mesh = sharding.make_mesh(1)
  model = models.build_model(config.model, len(builder.info.metadata["class_names"]))

  def probabilities(use_teacher, inputs):  # the student as in training (BatchNorm)
    variables, _ = restore_variables(workdir, mesh, use_teacher=use_teacher)
    if use_teacher:
      logits = model.apply(variables, inputs, train=False)
    else:
      logits, _ = model.apply(variables, inputs, train=True, mutable=["batch_stats"])
    logits = np.asarray(logits, np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)

  teacher = probabilities(True, images)
  student = probabilities(False, (1 - mask) * images + mask * images[partner])
  target = (1 - mask) * teacher + mask * teacher[partner]
  error = ((student - target) ** 2).sum(-1)
  distance = np.stack([_brute_force_distance(m) for m in mask[..., 0]])
  assert mean_error == pytest.approx(error.mean(), rel=1e-4)
  assert clean_error == pytest.approx(((probabilities(False, images) - teacher) ** 2)
                                      .sum(-1).mean(), rel=1e-4)
  expected = edge_consistency.bin_errors(distance, error, np.ones_like(error))
  assert [r["bin"] for r in rows] == [r["bin"] for r in expected]
  for row, want in zip(rows, expected):
    assert row["pixel_share"] == pytest.approx(want["pixel_share"])
    assert row["mean_error"] == pytest.approx(want["mean_error"], rel=1e-4)


def test_a_method_without_masks_is_refused_by_name(trained, tmp_path):
  import json
  import shutil

  _, workdir, _ = trained
  copy = tmp_path / "supervised_run"
  shutil.copytree(workdir, copy)
  saved = json.loads((copy / "config.json").read_text())
  saved["method"] = "supervised"
  (copy / "config.json").write_text(json.dumps(saved))
  with pytest.raises(SystemExit, match="method 'supervised' draws no mask"):
    edge_consistency.edge_table(str(copy), "train", 4, draws=1)
