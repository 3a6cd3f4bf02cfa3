"""Tests of cowmix_jax/analysis/toy2d.py: the distance map and the boundary score."""

import jax.numpy as jnp
import numpy as np
import pytest

from cowmix_jax.analysis import toy2d


def test_signed_distance_map_equals_the_distance_to_the_sampled_curve():
  """Against a brute-force distance to 20,001 points of the curve: within a pixel."""
  size = 128
  distance_map = toy2d.signed_distance_map(size)
  points = toy2d.grid_points(size)
  xs = np.linspace(-1, 1, 20001)
  curve = np.stack([xs, toy2d.true_boundary_y(xs)], axis=1)
  rng = np.random.default_rng(0)
  pixel = 2.0 / size
  for row, col in rng.integers(0, size, size=(40, 2)):
    point = points[row, col]
    sign = 1.0 if point[1] > toy2d.true_boundary_y(point[0]) else -1.0
    exact = sign * np.min(np.linalg.norm(curve - point, axis=1))
    assert distance_map[row, col] == pytest.approx(exact, abs=1.5 * pixel)
    assert float(toy2d.lookup(distance_map, jnp.asarray(point))) == pytest.approx(
        distance_map[row, col], rel=1e-6)  # the pixel that holds the point


def test_boundary_score_of_a_hand_worked_grid():
  # True boundary between rows 1 and 2 of a 4x4 grid (distance +-0.5 on its sides); the
  # prediction puts it one row lower, so its edge pixels are on row 2 (|d| = 0.5) and a
  # quarter of the square is wrong.
  distance_map = np.array([[1.5] * 4, [0.5] * 4, [-0.5] * 4, [-1.5] * 4])
  classes = np.array([[1] * 4, [1] * 4, [1] * 4, [0] * 4])
  score = toy2d.boundary_score(classes, distance_map)
  assert score == {"boundary_distance": 0.5, "misclassified": 0.25}


def test_the_gap_field_keeps_out_of_the_gap():
  distance_map = toy2d.signed_distance_map()
  data = toy2d.sample_data(0, 4, 500, 0.3, distance_map)
  for setting in ("gap", "everywhere"):
    assert list(data[setting]["labels"]) == [0] * 4 + [1] * 4
  gap = np.concatenate([data["gap"]["unlabelled"], data["gap"]["labelled"]])
  everywhere = data["everywhere"]["unlabelled"]
  assert np.abs(np.asarray(toy2d.lookup(distance_map, jnp.asarray(gap)))).min() > 0.15
  assert np.abs(np.asarray(toy2d.lookup(distance_map, jnp.asarray(everywhere)))).min() < 0.05


def test_the_paper_ordering_holds_at_reduced_size():
  """Seed 0, a 64-wide MLP, 1500 steps: with a gap, consistency puts the boundary nearer
  the truth than supervision alone; without a gap isotropic consistency puts it farther,
  and perturbations along the distance contours nearer than both."""
  scores = toy2d.summary(toy2d.run([0], labelled=32, unlabelled=2048, gap=0.3, steps=1500,
                                   width=64, batch=256))

  def distance(panel, mode):
    return scores[panel][mode]["boundary_distance"]

  assert distance("a_gap_isotropic", "consistency") < distance("a_gap_isotropic",
                                                               "supervised")
  assert distance("a_gap_isotropic", "consistency") < 0.15  # inside the gap
  supervised = distance("b_no_gap_isotropic", "supervised")
  assert distance("b_no_gap_isotropic", "consistency") > supervised
  assert distance("d_no_gap_constrained", "consistency") < supervised
