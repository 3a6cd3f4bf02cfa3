"""Where in a mixed image does the student disagree with the teacher? A trained run's
per-pixel consistency error, binned by the distance to the nearest mask boundary.

python -m cowmix_jax.experiments.edge_consistency runs/camvid_lite0/cowmix_seed3 \\
    [--num_images=64] [--draws=4] [--split=train] [--data_dir=DIR]

Reads the run's config.json and latest checkpoint (student and teacher), takes the
first ``num_images`` images of ``split`` as the training pipeline shrinks them (no
augmentation), draws the run's own perturbation ``draws`` times (masks and partners
from ``config.seed``), and computes, per pixel, the consistency error the training loss
averages: the squared distance between the student's softmax on the perturbed image
and the teacher's target (before the confidence weight). Each pixel is binned by its
Euclidean distance in pixels to the nearest pixel on the other side of its mask
(1 = next to the boundary); the table gives each bin's share of the scored pixels, its
mean error and its share of the summed error, next to the student's error on the clean
images (no perturbation) as the floor. Only mask-based perturbations (CowMix, CowOut,
CutMix, CutOut) have a boundary. Used in docs/RESULTS.md to ask whether CowMix's large
consistency term sits at the mask edges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags
from scipy import ndimage

from cowmix_jax import cli, losses, mixing, models, sharding
from cowmix_jax import data as data_lib
from cowmix_jax.data import builders
from cowmix_jax.evaluate import eval_batches, restore_variables
from cowmix_jax.experiments.class_share import load_run_config

# Bin edges in pixels: [1, 2), [2, 3), [3, 5), [5, 9), [9, inf); no boundary is its own row.
DISTANCE_EDGES = (1.0, 2.0, 3.0, 5.0, 9.0, math.inf)


def distance_to_other_side(mask: np.ndarray) -> np.ndarray:
  """Euclidean distance from each pixel to the nearest pixel of the other mask value.

  Args:
    mask: ``[H, W]`` 0/1 (values >= 0.5 count as 1).

  Returns:
    ``[H, W]`` float64: 1 for a pixel with a 4-neighbour on the other side, larger
    further in; ``inf`` everywhere when the mask has one value only.
  """
  ones = np.asarray(mask) >= 0.5
  if ones.all() or not ones.any():
    return np.full(ones.shape, np.inf)
  inside = ndimage.distance_transform_edt(ones)  # for ones: distance to the nearest zero
  outside = ndimage.distance_transform_edt(~ones)
  return np.where(ones, inside, outside)


def bin_errors(distance: np.ndarray, error: np.ndarray, weight: np.ndarray,
               edges: Sequence[float] = DISTANCE_EDGES) -> list[dict]:
  """Weighted pixel counts and errors per distance bin.

  Args:
    distance: ``[...]`` distance of each pixel to the boundary (``inf``: none).
    error: ``[...]`` per-pixel consistency error.
    weight: ``[...]`` how much each pixel counts (the loss mask; 0 leaves it out).
    edges: increasing bin edges; bin k is ``[edges[k], edges[k + 1])``.

  Returns:
    one ``{"bin": label, "pixel_share", "mean_error", "error_share"}`` per bin that
    holds weight, then a ``"no boundary"`` row where some pixels have ``inf``.
  """
  distance, error, weight = (np.asarray(a, np.float64).ravel()
                             for a in (distance, error, weight))
  total_weight, total_error = weight.sum(), (weight * error).sum()
  if total_weight <= 0:
    raise ValueError("no pixel carries any weight: nothing to bin")
  bins = [(f"[{lo:g}, {hi:g})", (distance >= lo) & (distance < hi))
          for lo, hi in zip(edges[:-1], edges[1:])]
  bins.append(("no boundary", np.isinf(distance)))
  rows = []
  for label, members in bins:
    w = weight * members
    if w.sum() <= 0:
      continue
    summed = (w * error).sum()
    rows.append({"bin": label, "pixel_share": float(w.sum() / total_weight),
                 "mean_error": float(summed / w.sum()),
                 "error_share": float(summed / total_error) if total_error > 0 else 0.0})
  return rows


def _logits(model, variables, images, train: bool) -> jax.Array:
  """The model's logits on ``images [N, h, w, 3]``: ``[N, h, w, K]``. ``train=True``
  applies the network as the training step applies the student (the BatchNorm
  statistics it would update are dropped)."""
  if train:
    logits, _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return logits
  return model.apply(variables, images, train=False)


def consistency_maps(model, teacher, student, perturbation: mixing.Perturbation,
                     images: np.ndarray, key: jax.Array, kind: str) -> dict[str, np.ndarray]:
  """One draw of the perturbation on ``images [N, h, w, 3]`` (N >= 2).

  Returns:
    ``{"error": [N, h, w]`` student-vs-target error, ``"loss_mask": [N, h, w]``,
    ``"mask": [N, h, w]`` the drawn mask, ``"clean_error": [N, h, w]`` the student's
    error on the clean images against the teacher's clean prediction``}``.
  """
  draws = perturbation.sample(key, images)
  teacher_input, student_input = perturbation.inputs(images, draws)
  teacher_probs = jax.nn.softmax(_logits(model, teacher, teacher_input, train=False))
  target, loss_mask = perturbation.target(teacher_probs, draws)
  student_logits = _logits(model, student, student_input, train=True)
  clean_teacher = jax.nn.softmax(_logits(model, teacher, images, train=False))
  clean_student = _logits(model, student, images, train=True)
  return {"error": np.asarray(losses.consistency_per_pixel(student_logits, target, kind)),
          "loss_mask": np.asarray(loss_mask), "mask": np.asarray(draws["mask"]),
          "clean_error": np.asarray(losses.consistency_per_pixel(clean_student,
                                                                 clean_teacher, kind))}


def first_images(config, builder, split: str, num_images: int) -> np.ndarray:
  """The first ``num_images`` images of ``split`` as the run's model sees them
  (shrunk by ``config.data.downscale``, normalised, the evaluation canvas's padding
  cropped off): ``[n, h, w, 3]`` float32. The images must all have one size."""
  if split not in builder.info.splits:
    raise SystemExit(f"--split={split}: the dataset has {sorted(builder.info.splits)}")
  data_lib.resolve_eval_canvas(config.data, builder, split)
  factor = config.data.downscale
  chosen, first_size = [], None
  for batch in eval_batches(builder, config, split):
    for image, image_id, size in zip(batch["image"], batch["image_id"], batch["size"]):
      if not image_id:
        continue
      size = tuple(int(v) for v in size)
      first_size = first_size or size
      if size != first_size:
        raise SystemExit(f"{image_id.decode()}: size {size}, the first image's "
                         f"{first_size}; this tool needs equal-sized images")
      chosen.append(image[:size[0] // factor, :size[1] // factor])
      if len(chosen) == num_images:
        return np.stack(chosen)
  if len(chosen) < 2:
    raise SystemExit(f"--split={split} has {len(chosen)} image(s); mixing needs 2")
  return np.stack(chosen)


def edge_table(workdir: str, split: str, num_images: int, draws: int,
               data_dir: str | None = None) -> tuple[list[dict], float, float]:
  """``bin_errors`` of a run over ``draws`` draws on ``num_images`` images, the mean
  error over the scored pixels, and the student's mean error on the clean images."""
  config = load_run_config(workdir, data_dir)
  perturbation = mixing.make_perturbation(config)
  if perturbation.mask_kind is None:
    raise SystemExit(f"{workdir}: method {config.method!r} draws no mask; this tool "
                     "bins by the distance to a mask boundary (cowmix, cowout, cutmix, "
                     "cutout)")
  builder = builders.prepare(config.data)
  images = first_images(config, builder, split, num_images)
  mesh = sharding.make_mesh(1)
  teacher, _ = restore_variables(workdir, mesh, use_teacher=True)
  student, _ = restore_variables(workdir, mesh, use_teacher=False)
  model = models.build_model(config.model, len(builder.info.metadata["class_names"]))
  key = jax.random.PRNGKey(config.seed)
  pieces = {"distance": [], "error": [], "loss_mask": [], "clean_error": []}
  for k in range(draws):
    maps = consistency_maps(model, teacher, student, perturbation, images,
                            jax.random.fold_in(key, k), config.consistency_loss)
    pieces["distance"].append(np.stack([distance_to_other_side(m) for m in maps["mask"]]))
    for name in ("error", "loss_mask", "clean_error"):
      pieces[name].append(maps[name])
    print(f"draw {k + 1}/{draws} done", flush=True)
  joined = {name: np.concatenate(v) for name, v in pieces.items()}
  rows = bin_errors(joined["distance"], joined["error"], joined["loss_mask"])
  mean_error = float((joined["error"] * joined["loss_mask"]).sum() / joined["loss_mask"].sum())
  return rows, mean_error, float(joined["clean_error"].mean())


def format_table(name: str, rows: list[dict], mean_error: float, clean_error: float) -> str:
  """A Markdown table of ``bin_errors`` rows under the run's name."""
  lines = [f"{name}: mean error {mean_error:.4f} over the scored pixels; the student on "
           f"clean images {clean_error:.4f}",
           "| distance to the boundary (px) | share of pixels | mean error | share of the error |",
           "|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['bin']} | {100 * row['pixel_share']:.1f}% | "
                 f"{row['mean_error']:.4f} | {100 * row['error_share']:.1f}% |")
  return "\n".join(lines)


FLAGS = cli.new_flags()
flags.DEFINE_string("data_dir", "", "override config.data.data_dir", flag_values=FLAGS)
flags.DEFINE_string("split", "train", "the images to perturb (the unlabelled images come "
                    "from the training split)", flag_values=FLAGS)
flags.DEFINE_integer("num_images", 64, "how many images, from the start of the split",
                     lower_bound=2, flag_values=FLAGS)
flags.DEFINE_integer("draws", 4, "perturbation draws per image", lower_bound=1,
                     flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> None:
  workdirs = cli.parse(FLAGS, argv, __doc__)  # the training workdirs
  if not workdirs:
    raise app.UsageError("give one or more training workdirs")
  for workdir in workdirs:
    rows, mean_error, clean_error = edge_table(workdir, FLAGS.split, FLAGS.num_images,
                                               FLAGS.draws, FLAGS.data_dir)
    print(format_table(workdir, rows, mean_error, clean_error))


if __name__ == "__main__":
  cli.run(main)
