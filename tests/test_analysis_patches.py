"""Tests of cowmix_jax/analysis/patches.py against brute force over explicit patches."""

import numpy as np
import pytest

from cowmix_jax.analysis import patches


def _patch(image, row, col, half):
  return image[row - half:row + half + 1, col - half:col + half + 1].astype(np.float64)


def _distance(image, a, b, half):
  return np.sqrt(np.sum((_patch(image, *a, half) - _patch(image, *b, half)) ** 2))


@pytest.mark.parametrize("patch", [1, 3, 5])
def test_neighbour_distances_equal_a_loop_over_patches(patch):
  rng = np.random.default_rng(patch)
  image = rng.uniform(size=(11, 13, 3))
  half = patch // 2
  right, down = (np.asarray(d) for d in patches.neighbour_distances(image, patch))
  assert right.shape == (11 - 2 * half, 13 - 2 * half - 1)
  assert down.shape == (11 - 2 * half - 1, 13 - 2 * half)
  for (i, j), value in np.ndenumerate(right):
    centre = (i + half, j + half)
    expected = _distance(image, centre, (centre[0], centre[1] + 1), half)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)
  for (i, j), value in np.ndenumerate(down):
    centre = (i + half, j + half)
    expected = _distance(image, centre, (centre[0] + 1, centre[1]), half)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_the_average_map_is_the_mean_over_four_neighbours_of_the_reflected_image():
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(7, 9, 2))
  patch, half = 3, 1
  padded = np.pad(image, ((half + 1,) * 2, (half + 1,) * 2, (0, 0)), mode="reflect")
  average = np.asarray(patches.average_neighbour_distance(image, patch))
  assert average.shape == (7, 9)
  for (r, c), value in np.ndenumerate(average):
    centre = (r + half + 1, c + half + 1)
    neighbours = [(centre[0] + dr, centre[1] + dc)
                  for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    expected = np.mean([_distance(padded, centre, n, half) for n in neighbours])
    assert value == pytest.approx(expected, rel=1e-5)


def test_neighbour_pairs_count_each_labelled_pair_once_by_class():
  rng = np.random.default_rng(1)
  image = rng.uniform(size=(9, 10, 3))
  label = rng.integers(0, 3, size=(9, 10)).astype(np.int64)
  label[2, 4] = label[6, 7] = 255
  patch, half = 3, 1
  same, across = patches.neighbour_pairs(image, label, patch)
  expected_same, expected_across = [], []
  for r in range(half, 9 - half):
    for c in range(half, 10 - half):
      for n in ((r, c + 1), (r + 1, c)):
        if n[0] >= 9 - half or n[1] >= 10 - half:
          continue
        if label[r, c] == 255 or label[n] == 255:
          continue
        target = expected_same if label[r, c] == label[n] else expected_across
        target.append(_distance(image, (r, c), n, half))
  np.testing.assert_allclose(np.sort(same), np.sort(expected_same), rtol=1e-5)
  np.testing.assert_allclose(np.sort(across), np.sort(expected_across), rtol=1e-5)
  pairs = patches.boundary_pairs(label, patch)
  assert len(pairs) == len(expected_across)
  for row, col, n_row, n_col in pairs:
    assert label[row, col] != label[n_row, n_col] and 255 not in (label[row, col],
                                                                  label[n_row, n_col])


def test_fft_nearest_patch_distances_equal_a_direct_search():
  rng = np.random.default_rng(2)
  image = rng.uniform(size=(12, 15, 3))
  other = rng.uniform(size=(10, 9, 3))
  patch, half = 5, 2
  centres = np.array([[2, 2], [5, 7], [9, 12]])
  queries = np.asarray(patches.extract_patches(image, centres, patch))
  for query, centre in zip(queries, centres):
    np.testing.assert_array_equal(query, _patch(image, *centre, half).astype(np.float32))
  nearest = np.asarray(patches.nearest_patch_distances(queries, other))
  for query, value in zip(queries, nearest):
    direct = min(np.sqrt(np.sum((_patch(other, r, c, half) - query) ** 2))
                 for r in range(half, 10 - half) for c in range(half, 9 - half))
    assert value == pytest.approx(direct, rel=1e-4)
  # A query taken from the searched image itself is found at distance 0.
  assert np.asarray(patches.nearest_patch_distances(queries, image)) == pytest.approx(
      0.0, abs=1e-2)


def test_even_patch_sizes_are_refused():
  with pytest.raises(ValueError, match="patch size 4: expected an odd number"):
    patches.check_patch_size(4)
