"""Tests of cowmix_jax/analysis/mask_gallery.py: mask statistics against theory, the
perturbed pictures against their sources, the command on the synthetic dataset."""

import json
import math

import jax
import numpy as np
import pytest

from cowmix_jax import masks
from cowmix_jax.analysis import mask_gallery
from cowmix_jax.conventions import NORMALISATIONS


def test_boundary_density_of_a_hand_worked_mask():
  mask = np.array([[0, 0, 1],
                   [0, 0, 1],
                   [1, 1, 1]])
  # (0, 1) and (1, 1) differ on the right, (1, 0) and (1, 1) below: 3 of 9 pixels.
  assert mask_gallery.boundary_density(mask) == pytest.approx(3 / 9)


@pytest.mark.parametrize("sigma", [8.0, 16.0])
def test_cow_masks_cross_as_often_as_rice_formula_says(sigma):
  """White noise blurred by a Gaussian of width s has the correlation exp(-t^2 / 4s^2);
  by Rice's formula it crosses its median 1 / (pi s sqrt(2)) times per pixel along a
  row, so that share of pixels differs from its right neighbour."""
  drawn = np.asarray(masks.cow_masks(jax.random.PRNGKey(0), (16, 256, 256), (sigma, sigma),
                                     (0.5, 0.5)))
  right = np.mean(drawn[:, :, :-1] != drawn[:, :, 1:])
  assert right == pytest.approx(1 / (math.pi * sigma * math.sqrt(2)), rel=0.1)
  assert drawn.mean() == pytest.approx(0.5, abs=0.03)


def test_perturbed_pictures_take_each_pixel_from_a_source():
  rng = np.random.default_rng(0)
  images = rng.uniform(0.05, 0.95, size=(2, 32, 48, 3))
  pictures = mask_gallery.perturbed_pairs(images, jax.random.PRNGKey(1), "imagenet")
  mean = np.array(NORMALISATIONS["imagenet"]["mean"]) / 255.0
  for method, picture in pictures.items():
    first = picture[0]
    from_a = np.all(np.isclose(first, images[0], atol=1e-5), axis=-1)
    if method.endswith("mix"):
      other = np.all(np.isclose(first, images[1], atol=1e-5), axis=-1)
    else:  # erased pixels are the normalisation's zero: its mean colour
      other = np.all(np.isclose(first, mean, atol=1e-5), axis=-1)
    assert np.all(from_a | other), method
    assert from_a.any() and other.any(), method


def test_the_command_writes_the_gallery_and_the_table(tmp_path, synthetic_builder,
                                                      monkeypatch, capsys):
  from cowmix_jax.data import builders

  monkeypatch.setattr(builders, "prepare", lambda data: synthetic_builder)
  out = tmp_path / "out"
  assert mask_gallery.main(["--dataset=synthetic", f"--output_dir={out}", "--sigmas=2,4",
                            "--size=64", "--num_masks=4", "--images=0,3"]) == 0
  report = json.loads((out / "mask_gallery.json").read_text())
  assert [row["sigma"] for row in report["statistics"]] == [2.0, 4.0]
  assert all(0.3 < row["proportion"] < 0.7 for row in report["statistics"])
  densities = [row["boundary_density"] for row in report["statistics"]]
  assert densities[0] > densities[1]  # finer masks have more boundary
  for name in ("masks", "mixing"):
    assert (out / f"mask_gallery_{name}.png").stat().st_size > 1000
  assert "| 2 | " in capsys.readouterr().out
