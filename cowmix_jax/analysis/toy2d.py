"""The paper's toy 2D experiment (Figure 2, appendix A): where does consistency
regularisation put a decision boundary when the data has, or has not, a gap there?

python -m cowmix_jax.analysis.toy2d --output_dir=docs/analyses

Points live in [-1, 1]^2 and belong to class 1 above a procedural curve (a sum of two
sines), class 0 below. A few labelled points and a field of unlabelled ones train an
MLP (3 hidden layers of 512 ReLU units, 2 outputs) with the mean teacher: the student
sees a perturbed copy of each unlabelled point and must agree with the teacher on the
clean one (cross-entropy between their class probabilities, weight 10, teacher
confidence threshold 0.97, teacher = moving average 0.99 of the student). Four panels:

  (a) gap: unlabelled points only farther than ``--gap / 2`` from the boundary,
      isotropic Gaussian perturbations;
  (b) no gap: unlabelled points everywhere, isotropic perturbations;
  (c) the signed distance to the true boundary (scipy's Euclidean distance transform
      on a 512 x 512 grid, negative in class 0) and its contours;
  (d) no gap, perturbations kept only where they stay on the point's distance contour
      (|m(x') - m(x)| <= 0.016, the paper's rule; the others are masked out).

Each panel's learned boundary is scored by its mean distance to the true one (over the
grid pixels where the prediction changes) and by the misclassified share of the square;
the same runs without the consistency term (supervised) are the reference. Writes
``toy2d.png`` and ``toy2d.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from scipy import ndimage
from tqdm import tqdm

from cowmix_jax import cli, plotting

GRID = 512  # the paper's distance map resolution
# The paper's perturbation scale and contour tolerance, in [-1, 1] units.
PERTURBATION_STD = 0.117
CONTOUR_TOLERANCE = 0.016

FLAGS = cli.new_flags()
flags.DEFINE_string("output_dir", "docs/analyses", "directory of toy2d.png and toy2d.json",
                    flag_values=FLAGS)
flags.DEFINE_integer("labelled", 32, "labelled points per class", flag_values=FLAGS)
flags.DEFINE_integer("unlabelled", 2048, "unlabelled points", flag_values=FLAGS)
flags.DEFINE_float("gap", 0.3, "width of the empty band around the boundary in panel (a)",
                   flag_values=FLAGS)
flags.DEFINE_integer("steps", 2000, "training steps per run", flag_values=FLAGS)
flags.DEFINE_integer("batch", 256, "unlabelled points per step (drawn from the field)",
                     flag_values=FLAGS)
flags.DEFINE_integer("width", 512, "hidden units per layer", flag_values=FLAGS)
flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds (each panel and reference per seed)",
                  flag_values=FLAGS)


def true_boundary_y(x: np.ndarray) -> np.ndarray:
  """The class boundary: class 1 lies above ``y = 0.35 sin(2.5 x) + 0.15 sin(7 x + 1)``."""
  return 0.35 * np.sin(2.5 * x) + 0.15 * np.sin(7.0 * x + 1.0)


def grid_points(size: int = GRID) -> np.ndarray:
  """``[size, size, 2]`` pixel centres of [-1, 1]^2; row 0 is y = +1 (image order)."""
  coordinates = (np.arange(size) + 0.5) / size * 2.0 - 1.0
  xs, ys = np.meshgrid(coordinates, coordinates[::-1])
  return np.stack([xs, ys], axis=-1)


def true_classes(points: np.ndarray) -> np.ndarray:
  return (points[..., 1] > true_boundary_y(points[..., 0])).astype(np.int32)


def signed_distance_map(size: int = GRID) -> np.ndarray:
  """``[size, size]`` signed distance to the boundary in [-1, 1] units (negative in
  class 0), by the Euclidean distance transform of each class region, as the paper."""
  classes = true_classes(grid_points(size))
  inside_one = ndimage.distance_transform_edt(classes == 1)
  inside_zero = ndimage.distance_transform_edt(classes == 0)
  return (inside_one - inside_zero) * (2.0 / size)


def lookup(distance_map: np.ndarray, points: jax.Array) -> jax.Array:
  """The map's value at the pixel holding each point ``[..., 2]``."""
  size = distance_map.shape[0]
  col = jnp.clip(((points[..., 0] + 1.0) / 2.0 * size).astype(jnp.int32), 0, size - 1)
  row = jnp.clip(((1.0 - points[..., 1]) / 2.0 * size).astype(jnp.int32), 0, size - 1)
  return jnp.asarray(distance_map)[row, col]


@dataclasses.dataclass(frozen=True)
class Panel:
  name: str
  gap: bool  # unlabelled points only outside the gap
  constrained: bool  # perturbations kept only along the distance contours


PANELS = (Panel("a_gap_isotropic", True, False), Panel("b_no_gap_isotropic", False, False),
          Panel("d_no_gap_constrained", False, True))


def sample_data(seed: int, labelled: int, unlabelled: int, gap: float,
                distance_map: np.ndarray) -> dict[str, np.ndarray]:
  """Two settings, each with ``labelled`` points per class and a field of ``unlabelled``
  points: ``gap`` (nothing within ``gap / 2`` of the boundary) and ``everywhere``.

  Returns:
    ``{setting: {"labelled": [2L, 2], "labels": [2L], "unlabelled": [U, 2]}}``.
  """
  rng = np.random.default_rng(seed)

  def draw(count, keep):
    found = np.zeros((0, 2))
    while len(found) < count:
      points = rng.uniform(-1.0, 1.0, size=(4 * count, 2))
      found = np.concatenate([found, points[keep(points)]])
    return found[:count].astype(np.float32)

  def outside_gap(points):
    return np.abs(np.asarray(lookup(distance_map, jnp.asarray(points)))) > gap / 2

  def setting(keep):
    points = np.concatenate([draw(labelled, lambda p, c=c: keep(p) & (true_classes(p) == c))
                             for c in (0, 1)])
    return {"labelled": points, "labels": true_classes(points),
            "unlabelled": draw(unlabelled, keep)}

  return {"gap": setting(outside_gap), "everywhere": setting(lambda p: np.ones(len(p), bool))}


class MLP(nn.Module):
  width: int = 512

  @nn.compact
  def __call__(self, x):
    for _ in range(3):
      x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(2)(x)


def train(seed: int, data: dict, panel: Panel, consistency: bool, steps: int, width: int,
          batch: int, distance_map: np.ndarray, weight: float = 10.0, threshold: float = 0.97,
          teacher_alpha: float = 0.99, learning_rate: float = 1e-3):
  """The teacher's parameters after ``steps`` of mean-teacher training (the consistency
  term off for the supervised reference). Returns a function ``points -> logits``."""
  model = MLP(width)
  key = jax.random.PRNGKey(seed)
  params = model.init(key, jnp.zeros((1, 2)))
  tx = optax.adam(learning_rate)
  data = data["gap" if panel.gap else "everywhere"]
  unlabelled = jnp.asarray(data["unlabelled"])
  labelled, labels = jnp.asarray(data["labelled"]), jnp.asarray(data["labels"])
  distances = jnp.asarray(distance_map)

  def loss_fn(student, teacher, step_key):
    supervised = optax.softmax_cross_entropy_with_integer_labels(
        model.apply(student, labelled), labels).mean()
    if not consistency:
      return supervised
    pick_key, noise_key = jax.random.split(step_key)
    points = unlabelled[jax.random.randint(pick_key, (batch,), 0, unlabelled.shape[0])]
    moved = points + PERTURBATION_STD * jax.random.normal(noise_key, points.shape)
    target = jax.nn.softmax(model.apply(teacher, points))
    target = jax.lax.stop_gradient(target)
    keep = (jnp.max(target, axis=-1) >= threshold).astype(jnp.float32)
    if panel.constrained:
      change = jnp.abs(lookup(distances, moved) - lookup(distances, points))
      keep = keep * (change <= CONTOUR_TOLERANCE)
    cross_entropy = optax.softmax_cross_entropy(model.apply(student, moved), target)
    return supervised + weight * jnp.mean(keep * cross_entropy)

  @jax.jit
  def step(state, step_key):
    student, teacher, opt_state = state
    grads = jax.grad(loss_fn)(student, teacher, step_key)
    updates, opt_state = tx.update(grads, opt_state, student)
    student = optax.apply_updates(student, updates)
    teacher = jax.tree.map(lambda t, s: teacher_alpha * t + (1 - teacher_alpha) * s,
                           teacher, student)
    return (student, teacher, opt_state)

  state = (params, params, tx.init(params))
  for step_key in jax.random.split(jax.random.fold_in(key, 1), steps):
    state = step(state, step_key)
  teacher = state[1]
  return jax.jit(functools.partial(model.apply, teacher))


def predicted_classes(predict, size: int = GRID) -> np.ndarray:
  """``[size, size]`` classes the model predicts on the grid."""
  logits = predict(jnp.asarray(grid_points(size).reshape(-1, 2)))
  return np.asarray(jnp.argmax(logits, axis=-1)).reshape(size, size)


def boundary_score(classes: np.ndarray, distance_map: np.ndarray) -> dict[str, float]:
  """How far the predicted boundary lies from the true one: the mean |signed distance|
  over the pixels where the prediction changes to the right or below, and the share of
  the square predicted wrongly."""
  edge = np.zeros(classes.shape, bool)
  edge[:, :-1] |= classes[:, :-1] != classes[:, 1:]
  edge[:-1] |= classes[:-1] != classes[1:]
  truth = (distance_map > 0).astype(classes.dtype)
  return {"boundary_distance": float(np.abs(distance_map[edge]).mean()) if edge.any()
          else float("nan"),
          "misclassified": float(np.mean(classes != truth))}


def run(seeds: Sequence[int], labelled: int, unlabelled: int, gap: float, steps: int,
        width: int, batch: int) -> dict:
  """Every panel with and without consistency for each seed: ``{panel: {"consistency":
  [score per seed], "supervised": [...], "classes": first seed's prediction grids}}``."""
  distance_map = signed_distance_map()
  results = {}
  progress = tqdm(total=len(seeds) * (len(PANELS) + 2), desc="toy 2D runs", unit="run")
  for seed in seeds:
    data = sample_data(seed, labelled, unlabelled, gap, distance_map)
    # One supervised reference per setting: the panels of a setting share its labels.
    references = {}
    for panel in PANELS:
      if panel.gap not in references:
        references[panel.gap] = predicted_classes(train(
            seed, data, panel, False, steps, width, batch, distance_map))
        progress.update()
    for panel in PANELS:
      reference = references[panel.gap]
      entry = results.setdefault(panel.name, {
          "consistency": [], "supervised": [], "classes_supervised": reference,
          "data": data["gap" if panel.gap else "everywhere"]})
      classes = predicted_classes(train(seed, data, panel, True, steps, width, batch,
                                        distance_map))
      progress.update()
      entry["consistency"].append(boundary_score(classes, distance_map))
      entry["supervised"].append(boundary_score(reference, distance_map))
      entry.setdefault("classes_consistency", classes)
  progress.close()
  return results


def summary(results: dict) -> dict:
  """Mean (over seeds) of each score, per panel and mode."""
  return {name: {mode: {key: float(np.mean([score[key] for score in entry[mode]]))
                        for key in entry[mode][0]}
                 for mode in ("consistency", "supervised")}
          for name, entry in results.items()}


def plot(plt, results: dict, path: str, gap: float) -> None:
  distance_map = signed_distance_map()
  figure, axes = plt.subplots(1, 4, figsize=(20, 5))
  extent = (-1, 1, -1, 1)
  order = [("a_gap_isotropic", "(a) gap, isotropic perturbations"),
           ("b_no_gap_isotropic", "(b) no gap, isotropic perturbations"),
           (None, "(c) signed distance to the true boundary"),
           ("d_no_gap_constrained", "(d) no gap, perturbations along the contours")]
  xs = np.linspace(-1, 1, 400)
  for axis, (name, title) in zip(axes, order):
    axis.set_title(title)
    axis.set_xlim(-1, 1)
    axis.set_ylim(-1, 1)
    axis.set_aspect("equal")
    if name is None:
      shown = axis.imshow(distance_map, extent=extent, cmap="RdBu")
      axis.contour(grid_points()[..., 0], grid_points()[..., 1], distance_map,
                   levels=np.linspace(-1, 1, 21), colors="k", linewidths=0.4)
      figure.colorbar(shown, ax=axis, fraction=0.045)
      continue
    entry = results[name]
    data = entry["data"]
    axis.imshow(entry["classes_consistency"], extent=extent, cmap="coolwarm", alpha=0.3,
                vmin=0, vmax=1)
    axis.scatter(data["unlabelled"][:, 0], data["unlabelled"][:, 1], s=1, c="grey")
    axis.scatter(data["labelled"][:, 0], data["labelled"][:, 1], c=data["labels"],
                 cmap="coolwarm", edgecolors="k", s=60, vmin=0, vmax=1)
    axis.plot(xs, true_boundary_y(xs), "k--", linewidth=1, label="true boundary")
    axis.contour(grid_points()[..., 0], grid_points()[..., 1],
                 entry["classes_supervised"], levels=[0.5], colors="g", linewidths=1)
    axis.contour(grid_points()[..., 0], grid_points()[..., 1],
                 entry["classes_consistency"], levels=[0.5], colors="m", linewidths=2)
  axes[0].plot([], [], "g-", label="supervised only")
  axes[0].plot([], [], "m-", label="with consistency")
  axes[0].legend(loc="lower left", fontsize=8)
  plotting.save(plt, figure, path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
  cli.parse(FLAGS, argv, __doc__)
  seeds = [int(seed) for seed in FLAGS.seeds]
  results = run(seeds, FLAGS.labelled, FLAGS.unlabelled, FLAGS.gap, FLAGS.steps, FLAGS.width,
                FLAGS.batch)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  plot(plotting.pyplot("toy2d"), results, os.path.join(FLAGS.output_dir, "toy2d.png"), FLAGS.gap)
  report = {"settings": cli.settings(FLAGS), "mean_over_seeds": summary(results),
            "per_seed": {name: {mode: entry[mode] for mode in ("consistency", "supervised")}
                         for name, entry in results.items()}}
  with open(os.path.join(FLAGS.output_dir, "toy2d.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(report["mean_over_seeds"], indent=2))
  return 0


if __name__ == "__main__":
  cli.run(main)
