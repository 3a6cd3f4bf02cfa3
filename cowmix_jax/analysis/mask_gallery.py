"""What cow masks look like, and what each mask-based perturbation does to real images
(the paper's Figure 4), with the masks' statistics per sigma.

python -m cowmix_jax.analysis.mask_gallery --dataset=camvid \\
    --manual_dir=/data/CamVid --output_dir=docs/analyses

Writes into ``--output_dir``:
- ``mask_gallery_masks.png``: cow masks with p = 0.5 and each of ``--sigmas`` on a
  ``--size`` x ``--size`` canvas (Figure 4, top);
- ``mask_gallery_mixing.png``: two images of the dataset and what CutMix, CowMix, CutOut
  and CowOut make of them, drawn by the perturbations the training step uses (the
  config's mask settings; erased pixels show the normalisation's mean colour, the zero
  the network sees);
- ``mask_gallery.json``: per sigma, over ``--num_masks`` masks, the mean proportion of
  ones and the boundary density (the share of pixels whose right or lower neighbour has
  the other value), also printed as a Markdown table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cowmix_jax import cli, config_base, masks, mixing, plotting
from cowmix_jax.analysis.patch_distances import load_examples
from cowmix_jax.normalisation import from_unit_rgb, to_unit_rgb

METHODS = ("cutmix", "cowmix", "cutout", "cowout")

FLAGS = cli.new_flags()
flags.DEFINE_list("sigmas", ["2", "4", "8", "16", "32", "64"], "cow-mask blur widths (px)",
                  flag_values=FLAGS)
flags.DEFINE_integer("size", 384, "height and width of the mask canvas", flag_values=FLAGS)
flags.DEFINE_integer("num_masks", 32, "masks per sigma for the statistics", flag_values=FLAGS)
flags.DEFINE_float("p", 0.5, "proportion of ones of the gallery masks", flag_values=FLAGS)
flags.DEFINE_string("dataset", "camvid", "the dataset of the two images", flag_values=FLAGS)
flags.DEFINE_string("manual_dir", "", "the dataset's directory", flag_values=FLAGS)
flags.DEFINE_string("data_dir", "", "where prepared datasets are", flag_values=FLAGS)
flags.DEFINE_string("split", "train", "the split of the two images", flag_values=FLAGS)
flags.DEFINE_list("images", ["0", "200"], "indices of the two images in the split sorted by "
                  "id", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "seed of the masks", flag_values=FLAGS)
flags.DEFINE_string("output_dir", "docs/analyses", "directory of the PNGs and the JSON",
                    flag_values=FLAGS)


def boundary_density(mask: np.ndarray) -> float:
  """The share of pixels of ``mask [..., H, W]`` whose right or lower neighbour differs
  (the last column and row have no such neighbour and count as not differing)."""
  edge = np.zeros(mask.shape, bool)
  edge[..., :, :-1] |= mask[..., :, :-1] != mask[..., :, 1:]
  edge[..., :-1, :] |= mask[..., :-1, :] != mask[..., 1:, :]
  return float(edge.mean())


def mask_statistics(key: jax.Array, sigmas: Sequence[float], size: int, count: int,
                    p: float) -> list[dict]:
  """Per sigma: the mean proportion of ones and the boundary density of ``count`` cow
  masks of ``size x size`` with proportion ``p``, and one mask for the gallery."""
  rows = []
  for sigma, sigma_key in zip(sigmas, jax.random.split(key, len(sigmas))):
    drawn = np.asarray(masks.cow_masks(sigma_key, (count, size, size), (sigma, sigma),
                                       (p, p)))
    rows.append({"sigma": float(sigma), "proportion": float(drawn.mean()),
                 "boundary_density": boundary_density(drawn), "example": drawn[0]})
  return rows


def perturbed_pairs(images: np.ndarray, key: jax.Array, normalisation: str
                    ) -> dict[str, np.ndarray]:
  """``{method: [2, H, W, 3] in [0, 1]}``: the student inputs each mask-based method makes
  of ``images [2, H, W, 3]`` (in [0, 1]), drawn with the base config's mask settings."""
  normalised = jnp.asarray(from_unit_rgb(images, normalisation), jnp.float32)
  results = {}
  for method, method_key in zip(METHODS, jax.random.split(key, len(METHODS))):
    config = config_base.get_base_config()
    config.method = method
    perturbation = mixing.make_perturbation(config)
    draws = perturbation.sample(method_key, normalised)
    _, student = perturbation.inputs(normalised, draws)
    results[method] = np.clip(to_unit_rgb(np.asarray(student), normalisation), 0.0, 1.0)
  return results


def markdown_table(rows: list[dict]) -> str:
  lines = ["| sigma (px) | proportion of ones | boundary density |", "|---|---|---|"]
  lines += [f"| {row['sigma']:g} | {row['proportion']:.3f} | {row['boundary_density']:.4f} |"
            for row in rows]
  return "\n".join(lines)


def plot_masks(plt, rows: list[dict], path: str) -> None:
  figure, axes = plt.subplots(1, len(rows), figsize=(3 * len(rows), 3.5))
  for axis, row in zip(np.atleast_1d(axes), rows):
    axis.imshow(row["example"], cmap="gray", vmin=0, vmax=1)
    axis.set_title(f"sigma = {row['sigma']:g}")
    axis.axis("off")
  plotting.save(plt, figure, path, dpi=90)


def plot_mixing(plt, images: np.ndarray, perturbed: dict[str, np.ndarray], path: str) -> None:
  columns = [("image A", images[0]), ("image B", images[1])]
  columns += [(method, perturbed[method][0]) for method in METHODS]
  figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 2.8))
  for axis, (title, picture) in zip(axes, columns):
    axis.imshow(picture)
    axis.set_title(title)
    axis.axis("off")
  plotting.save(plt, figure, path, dpi=90)


def main(argv: Sequence[str] | None = None) -> int:
  cli.parse(FLAGS, argv, __doc__)
  sigmas = [float(sigma) for sigma in FLAGS.sigmas]
  indices = [int(index) for index in FLAGS.images]
  if len(indices) != 2:
    raise app.UsageError(f"--images={FLAGS.images}: give two indices")
  plt = plotting.pyplot("mask_gallery")
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  key = jax.random.PRNGKey(FLAGS.seed)
  mask_key, mix_key = jax.random.split(key)
  rows = mask_statistics(mask_key, sigmas, FLAGS.size, FLAGS.num_masks, FLAGS.p)
  plot_masks(plt, rows, os.path.join(FLAGS.output_dir, "mask_gallery_masks.png"))

  data = config_base.get_data_config(FLAGS.dataset, manual_dir=FLAGS.manual_dir,
                                     data_dir=FLAGS.data_dir)
  examples = sorted(load_examples(data, FLAGS.split), key=lambda example: example[0])
  if not all(0 <= index < len(examples) for index in indices):
    raise app.UsageError(f"--images={FLAGS.images}: the split has {len(examples)} images")
  chosen = [examples[index] for index in indices]
  shapes = {image.shape for _, image, _ in chosen}
  if len(shapes) != 1:
    raise app.UsageError(f"--images: the two images differ in size ({sorted(shapes)})")
  images = np.stack([image for _, image, _ in chosen])
  perturbed = perturbed_pairs(images, mix_key, "imagenet")
  plot_mixing(plt, images, perturbed, os.path.join(FLAGS.output_dir, "mask_gallery_mixing.png"))

  report = {"size": FLAGS.size, "p": FLAGS.p, "num_masks": FLAGS.num_masks,
            "images": [image_id for image_id, _, _ in chosen],
            "statistics": [{k: v for k, v in row.items() if k != "example"} for row in rows]}
  with open(os.path.join(FLAGS.output_dir, "mask_gallery.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(markdown_table(report["statistics"]))
  return 0


if __name__ == "__main__":
  cli.run(main)
