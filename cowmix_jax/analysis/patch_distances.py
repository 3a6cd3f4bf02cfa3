"""Are class boundaries low-density regions? The paper's patch-distance analyses (Figure
1, appendix B: Figures 5 and 6) on any dataset the project reads.

python -m cowmix_jax.analysis.patch_distances --dataset=camvid \\
    --manual_dir=/data/CamVid --output_dir=docs/analyses --group_separator=_

Writes into ``--output_dir`` (prefix ``--prefix``, default the dataset's name):
- ``PREFIX_map.png``: one image and, per ``--patch_sizes``, the mean L2 distance from the
  patch around each pixel to the patches around its four neighbours, class boundaries
  in red (Figure 1);
- ``PREFIX_histogram.png``: the distances between patches centred on neighbouring
  pixels of ``--histogram_images`` images, same-class pairs against pairs across a class
  boundary (Figure 5);
- ``PREFIX_ratio.png``: for ``--queries`` patches beside a class boundary, the distance
  to the nearest patch of any other of ``--search_images`` images over the distance to
  the neighbour across the boundary (Figure 6);
- ``PREFIX.json``: the numbers behind the three.

Pixels are RGB values in [0, 1]; a patch is the P x P square around a pixel (P odd).
The histogram and the search take images evenly spaced over the split sorted by id;
queries without an image of another group to search are left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence

import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from tqdm import tqdm

from cowmix_jax import cli, config_base, plotting
from cowmix_jax.analysis import patches
from cowmix_jax.conventions import IGNORE_LABEL

FLAGS = cli.new_flags()
flags.DEFINE_string("dataset", "camvid", "camvid, cityscapes, pascal, folder or synthetic",
                    flag_values=FLAGS)
flags.DEFINE_string("manual_dir", "", "the dataset's directory ('' = its environment "
                    "variable)", flag_values=FLAGS)
flags.DEFINE_string("data_dir", "", "where prepared datasets are", flag_values=FLAGS)
flags.DEFINE_string("builder_config", "", "a builder variant (Cityscapes)", flag_values=FLAGS)
flags.DEFINE_string("split", "train", "the split the images come from", flag_values=FLAGS)
flags.DEFINE_string("output_dir", "docs/analyses", "directory of the PNGs and the JSON",
                    flag_values=FLAGS)
flags.DEFINE_string("prefix", "", "file name prefix (default: the dataset's name)",
                    flag_values=FLAGS)
flags.DEFINE_list("patch_sizes", ["15", "225"], "odd patch sizes of the maps",
                  flag_values=FLAGS)
flags.DEFINE_integer("example", 0, "index in the split of the image of the maps",
                     flag_values=FLAGS)
flags.DEFINE_integer("histogram_patch", 225, "patch size of the histogram and the ratios",
                     flag_values=FLAGS)
flags.DEFINE_integer("histogram_images", 100, "images whose neighbour pairs are counted",
                     flag_values=FLAGS)
flags.DEFINE_integer("queries", 100, "boundary patches whose nearest patch is searched",
                     flag_values=FLAGS)
flags.DEFINE_integer("search_images", 100, "images searched (queries come from them too)",
                     flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "seed of the query sample", flag_values=FLAGS)
flags.DEFINE_string("group_separator", "", "images whose ids agree up to the last occurrence "
                    "of this string (CamVid: '_', the video sequence) are not searched for "
                    "each other's queries; '' = only the query's own image is skipped",
                    flag_values=FLAGS)
flags.DEFINE_integer("query_chunk", 25, "queries searched at once (memory)",
                     flag_values=FLAGS)
flags.DEFINE_integer("image_chunk", 4, "images of one size searched at once (memory)",
                     flag_values=FLAGS)


def load_examples(data, split: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  """``(image id, image [H, W, 3] float32 in [0, 1], label [H, W])`` of every example of
  ``split`` of the dataset ``data`` (a ``config.data``), in the split's order."""
  from cowmix_jax.data import builders

  builder = builders.prepare(data)
  if split not in builder.info.splits:
    raise app.UsageError(f"--split={split}: the dataset has {sorted(builder.info.splits)}")
  for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    yield (example["image_id"].decode(), example["image"].astype(np.float32) / 255.0,
           example["label"])


def evenly_spaced(items: Sequence, count: int) -> list:
  """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
  if count >= len(items):
    return list(items)
  return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def group_of(image_id: str, separator: str) -> str:
  """The id up to the last ``separator`` (the whole id when empty or absent)."""
  return image_id.rsplit(separator, 1)[0] if separator and separator in image_id else image_id


def class_boundaries(label: np.ndarray) -> np.ndarray:
  """``[H, W]`` bool: pixels whose right or lower neighbour has another class (neither
  ignored)."""
  edge = np.zeros(label.shape, bool)
  for a, b, where in ((label[:, :-1], label[:, 1:], (slice(None), slice(0, -1))),
                      (label[:-1], label[1:], (slice(0, -1), slice(None)))):
    edge[where] |= (a != b) & (a != IGNORE_LABEL) & (b != IGNORE_LABEL)
  return edge


def map_statistics(distance_map: np.ndarray, label: np.ndarray) -> dict:
  """The map's mean on class-boundary pixels and on the other labelled pixels."""
  edge = class_boundaries(label)
  inside = ~edge & (label != IGNORE_LABEL)
  return {"mean": float(distance_map.mean()), "min": float(distance_map.min()),
          "max": float(distance_map.max()),
          "mean_on_boundaries": float(distance_map[edge].mean()) if edge.any() else None,
          "mean_inside_classes": float(distance_map[inside].mean()) if inside.any() else None}


def sample_queries(labels: Sequence[np.ndarray], patch: int, count: int,
                   rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
  """``count`` boundary pairs ``(image index, (row, col, n_row, n_col))``: images drawn
  uniformly among those with a boundary pair, then a pair uniformly in the image."""
  candidates = {i: patches.boundary_pairs(label, patch) for i, label in enumerate(labels)}
  candidates = {i: pairs for i, pairs in candidates.items() if len(pairs)}
  if not candidates:
    raise ValueError(f"no pair of neighbouring pixels of different classes with "
                     f"{patch}x{patch} patches inside the images")
  chosen = rng.choice(sorted(candidates), size=count)
  return [(int(i), candidates[i][rng.integers(len(candidates[i]))]) for i in chosen]


def image_batches(images: Sequence[np.ndarray], size: int) -> list[list[int]]:
  """Indices of ``images`` in batches of at most ``size`` consecutive images of one
  shape (the search runs on a batch at once)."""
  batches: list[list[int]] = []
  for index, image in enumerate(images):
    if batches and len(batches[-1]) < size and images[batches[-1][0]].shape == image.shape:
      batches[-1].append(index)
    else:
      batches.append([index])
  return batches


def distance_ratios(images: Sequence[np.ndarray], groups: Sequence[str], queries,
                    patch: int, chunk: int, image_chunk: int = 4) -> dict[str, np.ndarray]:
  """For each query pair: ``across`` (the distance to the neighbour across the
  boundary), ``nearest`` (to the nearest patch of any image of another group than the
  query's) and ``ratio``."""
  query_patches = np.stack([np.asarray(patches.extract_patches(
      jnp.asarray(images[i]), jnp.asarray(pair[None, :2]), patch))[0]
      for i, pair in queries])
  neighbour_patches = np.stack([np.asarray(patches.extract_patches(
      jnp.asarray(images[i]), jnp.asarray(pair[None, 2:]), patch))[0]
      for i, pair in queries])
  across = np.sqrt(np.sum((query_patches.astype(np.float64) - neighbour_patches) ** 2,
                          axis=(1, 2, 3)))
  owner = np.array([groups[i] for i, _ in queries])
  nearest = np.full(len(queries), np.inf)
  progress = tqdm(total=len(images), desc="nearest-patch search", unit="image")
  for batch in image_batches(images, image_chunk):
    stacked = jnp.asarray(np.stack([images[index] for index in batch]))
    for start in range(0, len(queries), chunk):
      found = np.asarray(patches.nearest_patch_distances_per_image(
          jnp.asarray(query_patches[start:start + chunk]), stacked))  # [B, n]
      for row, index in enumerate(batch):
        other = owner[start:start + chunk] != groups[index]
        block = nearest[start:start + chunk]
        block[other] = np.minimum(block[other], found[row][other])
    progress.update(len(batch))
  progress.close()
  searched = np.isfinite(nearest)
  if not searched.any():
    raise ValueError("no query had an image of another group to search: search more "
                     "images, or set a shorter --group_separator")
  return {"across": across[searched], "nearest": nearest[searched],
          "ratio": nearest[searched] / across[searched]}


def plot_maps(plt, image, label, maps: dict[int, np.ndarray], path: str) -> None:
  edge = class_boundaries(label)
  figure, axes = plt.subplots(1, 1 + len(maps), figsize=(5 * (1 + len(maps)), 4))
  axes[0].imshow(image)
  axes[0].set_title("image")
  for axis, (patch, distance_map) in zip(axes[1:], maps.items()):
    shown = axis.imshow(distance_map, cmap="Blues")
    overlay = np.zeros(edge.shape + (4,))
    overlay[edge] = (1.0, 0.0, 0.0, 1.0)
    axis.imshow(overlay)
    axis.set_title(f"mean distance to the 4 neighbours, {patch}x{patch} patches")
    figure.colorbar(shown, ax=axis, fraction=0.035)
  for axis in axes:
    axis.axis("off")
  plotting.save(plt, figure, path, dpi=110)


def plot_histogram(plt, same: np.ndarray, across: np.ndarray, patch: int, path: str) -> None:
  figure, axis = plt.subplots(figsize=(7, 4))
  bins = np.linspace(0, max(same.max(initial=0), across.max(initial=0)), 80)
  axis.hist(same, bins=bins, density=True, alpha=0.6, label=f"same class ({len(same):,})")
  axis.hist(across, bins=bins, density=True, alpha=0.6,
            label=f"across a class boundary ({len(across):,})")
  axis.set_xlabel(f"L2 distance between {patch}x{patch} patches on neighbouring pixels")
  axis.set_ylabel("density")
  axis.legend()
  plotting.save(plt, figure, path, dpi=110)


def plot_ratios(plt, ratios: np.ndarray, patch: int, path: str) -> None:
  figure, axis = plt.subplots(figsize=(7, 4))
  axis.hist(ratios, bins=40)
  axis.axvline(np.median(ratios), color="k", linestyle="--",
               label=f"median {np.median(ratios):.2f}")
  axis.set_xlabel(f"nearest patch in another image / neighbour across the boundary "
                  f"({patch}x{patch})")
  axis.set_ylabel("query patches")
  axis.legend()
  plotting.save(plt, figure, path, dpi=110)


def quantiles(values: np.ndarray) -> dict:
  q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9]) if len(values) else [None] * 5
  return {"count": int(len(values)), "mean": float(values.mean()) if len(values) else None,
          **{f"q{int(p * 100)}": (float(v) if v is not None else None)
             for p, v in zip((0.1, 0.25, 0.5, 0.75, 0.9), q)}}


def main(argv: Sequence[str] | None = None) -> int:
  cli.parse(FLAGS, argv, __doc__)
  sizes = [int(size) for size in FLAGS.patch_sizes]
  for size in (*sizes, FLAGS.histogram_patch):
    try:
      patches.check_patch_size(size)
    except ValueError as error:
      raise app.UsageError(str(error)) from None
  data = config_base.get_data_config(FLAGS.dataset, manual_dir=FLAGS.manual_dir,
                                     data_dir=FLAGS.data_dir,
                                     builder_config=FLAGS.builder_config)
  plt = plotting.pyplot("patch_distances")
  prefix = FLAGS.prefix or FLAGS.dataset
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  examples = sorted(tqdm(load_examples(data, FLAGS.split), desc=f"reading {FLAGS.split}",
                         unit="image"), key=lambda example: example[0])  # by image id
  if not 0 <= FLAGS.example < len(examples):
    raise app.UsageError(f"--example={FLAGS.example}: the split has {len(examples)} images")
  _, image, label = examples[FLAGS.example]
  maps = {size: np.asarray(patches.average_neighbour_distance(jnp.asarray(image), size))
          for size in sizes}
  report = {"dataset": FLAGS.dataset, "split": FLAGS.split, "pixel_scale": "RGB in [0, 1]",
            "example": examples[FLAGS.example][0],
            "maps": {str(size): map_statistics(m, label) for size, m in maps.items()}}
  plot_maps(plt, image, label, maps, os.path.join(FLAGS.output_dir, f"{prefix}_map.png"))

  patch = FLAGS.histogram_patch
  same, across = [], []
  counted = evenly_spaced(examples, FLAGS.histogram_images)
  for _, image, label in tqdm(counted, desc="neighbour pairs", unit="image"):
    pair_same, pair_across = patches.neighbour_pairs(image, label, patch)
    same.append(pair_same)
    across.append(pair_across)
  same, across = np.concatenate(same), np.concatenate(across)
  report["histogram"] = {"patch": patch, "images": len(counted),
                         "same_class": quantiles(same), "across_boundary": quantiles(across)}
  plot_histogram(plt, same, across, patch,
                 os.path.join(FLAGS.output_dir, f"{prefix}_histogram.png"))

  searched = evenly_spaced(examples, FLAGS.search_images)
  queries = sample_queries([label for _, _, label in searched], patch, FLAGS.queries,
                           np.random.default_rng(FLAGS.seed))
  groups = [group_of(image_id, FLAGS.group_separator) for image_id, _, _ in searched]
  found = distance_ratios([image for _, image, _ in searched], groups, queries, patch,
                          FLAGS.query_chunk, FLAGS.image_chunk)
  report["ratio"] = {"patch": patch, "search_images": len(searched),
                     "groups": len(set(groups)), "group_separator": FLAGS.group_separator,
                     "ratio": quantiles(found["ratio"]),
                     "across": quantiles(found["across"]),
                     "nearest": quantiles(found["nearest"])}
  plot_ratios(plt, found["ratio"], patch, os.path.join(FLAGS.output_dir, f"{prefix}_ratio.png"))
  with open(os.path.join(FLAGS.output_dir, f"{prefix}.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report, indent=2))
  return 0


if __name__ == "__main__":
  cli.run(main)
