"""Tests of cowmix_jax/analysis/patch_distances.py: the command on the synthetic dataset."""

import json

import numpy as np
import pytest

from cowmix_jax.analysis import patch_distances, patches


def test_group_of_and_evenly_spaced():
  assert patch_distances.group_of("0001TP_006690", "_") == "0001TP"
  assert patch_distances.group_of("0001TP_006690", "") == "0001TP_006690"
  assert patch_distances.evenly_spaced(list(range(10)), 3) == [0, 4, 9]
  assert patch_distances.evenly_spaced([1, 2], 5) == [1, 2]


def test_class_boundaries_mark_pixels_whose_right_or_lower_neighbour_differs():
  label = np.array([[0, 0, 1],
                    [0, 255, 1],
                    [2, 2, 1]])
  expected = np.array([[False, True, False],
                       [True, False, False],
                       [False, True, False]])
  np.testing.assert_array_equal(patch_distances.class_boundaries(label), expected)


def test_the_command_counts_every_labelled_pair_and_writes_its_pictures(
    tmp_path, synthetic_builder, monkeypatch, capsys):
  from cowmix_jax.data import builders

  monkeypatch.setattr(builders, "prepare", lambda data: synthetic_builder)
  out = tmp_path / "out"
  assert patch_distances.main([
      "--dataset=synthetic", f"--output_dir={out}", "--patch_sizes=3,7", "--histogram_patch=7",
      "--histogram_images=5", "--search_images=6", "--queries=12", "--query_chunk=5",
      "--example=2"]) == 0
  report = json.loads((out / "synthetic.json").read_text())
  for name in ("map", "histogram", "ratio"):
    assert (out / f"synthetic_{name}.png").stat().st_size > 1000
  # Every pair of neighbouring labelled centres with patches inside, counted once.
  examples = sorted(patch_distances.load_examples(None, "train"), key=lambda e: e[0])
  half, expected = 3, 0
  for _, _, label in patch_distances.evenly_spaced(examples, 5):
    centre = label[half:-half, half:-half]
    expected += int(np.sum((centre[:, :-1] != 255) & (centre[:, 1:] != 255)))
    expected += int(np.sum((centre[:-1] != 255) & (centre[1:] != 255)))
  counted = report["histogram"]
  assert counted["same_class"]["count"] + counted["across_boundary"]["count"] == expected
  assert counted["images"] == 5 and report["example"] == examples[2][0]
  # Each image is its own group: every query has other images to search.
  ratio = report["ratio"]
  assert ratio["ratio"]["count"] == 12 and ratio["search_images"] == 6
  assert 0 < ratio["ratio"]["q10"] <= ratio["ratio"]["q90"]
  # The map statistics are those of the map of the chosen image.
  _, image, label = examples[2]
  distance_map = np.asarray(patches.average_neighbour_distance(image, 3))
  assert report["maps"]["3"]["mean"] == pytest.approx(float(distance_map.mean()), rel=1e-6)


def test_a_patch_size_that_is_even_is_a_usage_error():
  from absl import app

  with pytest.raises(app.UsageError, match="patch size 8"):
    patch_distances.main(["--patch_sizes=8"])


def test_ratios_search_only_images_of_other_groups():
  rng = np.random.default_rng(3)
  images = [rng.uniform(size=(9, 11, 3)).astype(np.float32) for _ in range(4)]
  groups = ["a", "a", "b", "c"]
  queries = [(0, np.array([3, 4, 3, 5])), (2, np.array([4, 4, 5, 4]))]
  patch, half = 5, 2
  images.insert(2, rng.uniform(size=(10, 11, 3)).astype(np.float32))  # another size
  groups.insert(2, "d")
  assert patch_distances.image_batches(images, 2) == [[0, 1], [2], [3, 4]]
  found = patch_distances.distance_ratios(images, groups, queries, patch, chunk=1,
                                          image_chunk=2)

  def cut(image, row, col):
    return image[row - half:row + half + 1, col - half:col + half + 1].astype(np.float64)

  heights = [image.shape[0] for image in images]
  for k, (owner, (row, col, n_row, n_col)) in enumerate(queries):
    query = cut(images[owner], row, col)
    across = np.sqrt(np.sum((query - cut(images[owner], n_row, n_col)) ** 2))
    nearest = min(np.sqrt(np.sum((cut(images[i], r, c) - query) ** 2))
                  for i in range(5) if groups[i] != groups[owner]
                  for r in range(half, heights[i] - half) for c in range(half, 11 - half))
    assert found["across"][k] == pytest.approx(across, rel=1e-5)
    assert found["nearest"][k] == pytest.approx(nearest, rel=1e-4)
    assert found["ratio"][k] == pytest.approx(nearest / across, rel=1e-4)
