"""Does a run's teacher suffer from BatchNorm statistics of perturbed images?

python -m cowmix_jax.experiments.recalibrate_bn runs/camvid_cpu/cowmix_seed0 [more workdirs] \\
    [--data_dir=DIR] [--stats_split=train] [--split=validation]
python -m cowmix_jax.experiments.recalibrate_bn --results=runs/camvid_cpu/results.json \\
    --root=runs/camvid_cpu

The student's running BatchNorm statistics are updated by the labelled pass and by the
unlabelled pass on perturbed images (mixed, blended or cut out), and the teacher's are
their moving average; the teacher is then evaluated on clean images. This script
evaluates each workdir's final teacher twice: with its stored statistics, and with
"precise" statistics recomputed from clean images of ``--stats_split`` (every batch's
mean and variance per BatchNorm layer, averaged over the split; Wu and Johnson,
"Rethinking 'batch' in BatchNorm", 2021), the weights unchanged. A large gain means the
perturbed statistics, not the weights, cost the teacher accuracy. With ``--results``
and ``--root`` it adds ``precise_bn_miou`` to every run of an ablation results file
(cowmix_jax/experiments/ablation.py), which ``plot_ablation.py`` then shows as a column.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cowmix_jax import cli, evaluate, metrics, models, sharding
from cowmix_jax.data import builders, pipeline
from cowmix_jax.evaluator import Evaluator
from cowmix_jax.experiments import ablation
from cowmix_jax.experiments.class_share import load_run_config


def precise_batch_stats(apply_fn: Callable, variables: dict,
                        batches: Iterable[np.ndarray]) -> dict:
  """BatchNorm statistics averaged over ``batches`` of images ``[B, H, W, 3]``.

  ``apply_fn(variables, images) -> new batch_stats`` runs the model in training mode
  (normalising by each batch's own statistics) with mutable ``batch_stats``. Running
  statistics update as ``new = m * old + (1 - m) * batch``: starting from zeros gives
  ``(1 - m) * batch``, and from ones ``m + (1 - m) * batch``, which reveals ``m`` for
  every layer. Returns ``{"mean", "var"}`` per layer, the plain average over batches.
  """
  zeros = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
  ones = jax.tree.map(jnp.ones_like, variables["batch_stats"])
  total, count, keep = None, 0, None
  for images in batches:
    from_zeros = apply_fn(dict(variables, batch_stats=zeros), images)
    if keep is None:  # 1 - m, per layer (the same for every batch)
      keep = jax.tree.map(lambda z, o: 1.0 - (o - z),
                          from_zeros, apply_fn(dict(variables, batch_stats=ones), images))
    batch = jax.tree.map(lambda z, k: z / k, from_zeros, keep)
    total = batch if total is None else jax.tree.map(jnp.add, total, batch)
    count += 1
  if not count:
    raise ValueError("precise_batch_stats: no batches")
  return jax.tree.map(lambda t: t / count, total)


def clean_batches(builder, config, split: str) -> Iterable[np.ndarray]:
  """Whole clean images of ``split`` as the training pass sees them (shrunk, padded to
  the crop), in batches of ``config.batch_size``; batches with padding examples are
  left out."""
  normalisation = models.input_normalisation(config.model)
  for batch in pipeline.eval_batches(builder, split, tuple(config.data.eval_canvas),
                                     config.batch_size, normalisation,
                                     downscale_factor=config.data.get("downscale", 1)):
    if all(batch["image_id"]):
      yield batch["image"]


def recalibrated_miou(workdir: str, data_dir: str, stats_split: str,
                      split: str | None) -> tuple[float, float]:
  """``(stored, precise)``: the final teacher's mIoU with its own BatchNorm statistics
  and with statistics recomputed on clean ``stats_split`` images."""
  config = load_run_config(workdir, data_dir)
  builder = builders.prepare(config.data)
  num_classes = len(builder.info.metadata["class_names"])
  mesh = sharding.make_mesh(1)
  model = models.build_model(config.model, num_classes)
  variables, _ = evaluate.restore_variables(workdir, mesh)

  @jax.jit
  def apply_fn(variables, images):
    _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return updates["batch_stats"]

  split = split or config.data.eval_split
  scorer = Evaluator(model, mesh, num_classes,
                     lambda: evaluate.eval_batches(builder, config, split))
  stored = metrics.mean_iou(scorer.confusion(variables))
  precise = dict(variables, batch_stats=precise_batch_stats(
      apply_fn, variables, clean_batches(builder, config, stats_split)))
  return stored, metrics.mean_iou(scorer.confusion(precise))


def add_to_results(results_path: str, root: str, data_dir: str, stats_split: str) -> None:
  """Adds ``precise_bn_miou`` to every run of an ablation results file that lacks it
  (workdirs under ``root``), saving after each run."""
  results = ablation.load_results(results_path)
  for name, record in sorted(results["runs"].items()):
    if "precise_bn_miou" in record:
      continue
    workdir = os.path.join(root, name)
    if not os.path.isdir(workdir):
      print(f"{name}: no workdir {workdir}; skipped")
      continue
    stored, precise = recalibrated_miou(workdir, data_dir, stats_split, record.get("split"))
    if abs(stored - record["miou"]) > 1e-6:
      raise SystemExit(f"{workdir}: the checkpoint gives mIoU {stored:.6f}, the results file "
                       f"{record['miou']:.6f}; is --root the grid's root?")
    ablation.save_run(results_path, name, dict(record, precise_bn_miou=precise))
    print(f"{name}: {100 * stored:.2f} -> {100 * precise:.2f}", flush=True)


FLAGS = cli.new_flags()
flags.DEFINE_string("data_dir", "", "override config.data.data_dir", flag_values=FLAGS)
flags.DEFINE_string("stats_split", "train", "clean images the statistics are recomputed on",
                    flag_values=FLAGS)
flags.DEFINE_string("split", None, "evaluation split (default: the config's)",
                    flag_values=FLAGS)
flags.DEFINE_string("results", "", "an ablation results file: add precise_bn_miou to its runs",
                    flag_values=FLAGS)
flags.DEFINE_string("root", "", "with --results: the runs' root directory", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> None:
  workdirs = cli.parse(FLAGS, argv, __doc__)  # the training workdirs
  if FLAGS.results:
    if not FLAGS.root:
      raise app.UsageError("--results needs --root (the directory of the runs' workdirs)")
    add_to_results(FLAGS.results, FLAGS.root, FLAGS.data_dir, FLAGS.stats_split)
    return
  if not workdirs:
    raise app.UsageError("give training workdirs, or --results and --root")
  print(f"{'run':<28} {'stored BN':>10} {'precise BN':>11} {'change':>7}")
  for workdir in workdirs:
    stored, precise = recalibrated_miou(workdir, FLAGS.data_dir, FLAGS.stats_split, FLAGS.split)
    name = os.path.basename(os.path.normpath(workdir))
    print(f"{name:<28} {100 * stored:10.2f} {100 * precise:11.2f} "
          f"{100 * (precise - stored):+7.2f}", flush=True)


if __name__ == "__main__":
  cli.run(main)
