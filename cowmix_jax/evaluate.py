"""Evaluate a checkpoint: per-class IoU over a whole split, as a table and JSON.

python -m cowmix_jax.evaluate --workdir=DIR [--config=configs/X.py] \\
    [--checkpoint=latest|best|STEP] [--split=validation|test] [--model=teacher|student] \\
    [--flip] [--window=H,W [--window_stride=H,W]] [--output=FILE.json] \\
    [--markdown=FILE.md] [--predictions_dir=DIR]

For example, after the README's demo (its run is in workdirs/synthetic)::

  python -m cowmix_jax.evaluate --workdir=workdirs/synthetic --checkpoint=best \\
      --output=workdirs/synthetic/best.json

Without ``--config``, the run's own saved config (``DIR/config.json``) is used, with any
``--config.KEY=VALUE`` overrides on top; only the checkpoint is read, so a pretrained
file the run started from need not exist any more.

Images are evaluated whole (padded to ``config.data.eval_canvas``, the padding ignored),
single scale, argmax; ``--flip`` averages the logits with those of the mirrored image;
``--window`` averages the logits of overlapping windows instead of one pass.
``--predictions_dir`` writes one palette PNG per image: pixel values are class ids, and
viewers show the dataset's colours.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence

import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import errors as flax_errors
from ml_collections import config_flags

from cowmix_jax import cli, metrics, models, outputs, reporting, sharding
from cowmix_jax import data as data_lib
from cowmix_jax.checkpoints import Checkpointer
from cowmix_jax.data import builders, pipeline
from cowmix_jax.evaluator import Evaluator


def restore_variables(workdir: str, mesh, checkpoint: str = "latest",
                      use_teacher: bool = True) -> tuple[dict, int]:
  """The model variables (teacher's or student's) of a checkpoint of ``workdir``,
  replicated on ``mesh``, and its step. Only the checkpoint is read: not the model's
  initialisation, nor the pretrained file the run started from."""
  prefix = "teacher_" if use_teacher else ""
  with Checkpointer(workdir) as checkpointer:
    try:
      entries, step = checkpointer.restore_entries(
          [f"{prefix}params", f"{prefix}batch_stats"], sharding.replicated(mesh), checkpoint)
    except FileNotFoundError as error:
      raise FileNotFoundError(f"{error} (train with: python -m cowmix_jax.main "
                              f"--workdir={workdir} ...)") from None
  return {"params": entries[f"{prefix}params"],
          "batch_stats": entries[f"{prefix}batch_stats"]}, step


def save_predictions(directory: str, batch: dict[str, np.ndarray], predictions: np.ndarray,
                     palette: Sequence[Sequence[int]] | None) -> None:
  """One palette PNG per real image of the batch, cropped to its own size."""
  for image_id, (height, width), prediction in zip(batch["image_id"], batch["size"],
                                                   predictions):
    if image_id:
      reporting.save_label_png(os.path.join(directory, image_id.decode() + ".png"),
                               prediction[:height, :width], palette)


def eval_batches(builder, config: ml_collections.ConfigDict, split: str) -> Iterable[dict]:
  """``split``'s evaluation batches as the config says (canvas, batch size,
  normalisation, downscale), for one process."""
  return pipeline.eval_batches(builder, split, tuple(config.data.eval_canvas),
                               config.eval_batch_size, models.input_normalisation(config.model),
                               downscale_factor=config.data.downscale)


def check_same_classes(workdir: str, class_names: Sequence[str],
                       data: ml_collections.ConfigDict) -> None:
  """Refuses a dataset whose classes differ from the run's (``workdir/classes.json``),
  in names, number or order: the network's output ``k`` is the run's class ``k``, so
  another order would score each class against another's pixels without an error."""
  saved = reporting.read_classes(workdir)
  if saved is None or list(saved[0]) == list(class_names):
    return
  where = f" ({data.manual_dir})" if data.get("manual_dir") else ""
  raise ValueError(
      f"the dataset {data.name!r}{where} has the classes {list(class_names)}, but the run "
      f"in {workdir} was trained on {list(saved[0])} "
      f"({os.path.join(workdir, reporting.CLASSES_FILE)}); evaluate it on data with the "
      f"run's classes in the run's order")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        checkpoint: str = "latest", split: str | None = None,
                        use_teacher: bool = True, flip: bool = False,
                        window: tuple[int, int] | None = None,
                        window_stride: tuple[int, int] | None = None,
                        prediction_dir: str | None = None) -> dict:
  """Evaluates a checkpoint on a split; returns the results dictionary."""
  split = split or config.data.eval_split
  builder = builders.prepare(config.data)
  if split not in builder.info.splits:
    raise ValueError(f"--split={split}: the dataset has {sorted(builder.info.splits)}")
  data_lib.resolve_eval_canvas(config.data, builder, split)
  class_names = list(builder.info.metadata["class_names"])
  check_same_classes(workdir, class_names, config.data)
  mesh = sharding.make_mesh(1)
  model = models.build_model(config.model, len(class_names))
  variables, step = restore_variables(workdir, mesh, checkpoint, use_teacher)
  if window is not None and window_stride is None:
    window_stride = tuple(max(1, 2 * w // 3) for w in window)
  scorer = Evaluator(model, mesh, len(class_names),
                     lambda: eval_batches(builder, config, split), flip=flip, window=window,
                     stride=window_stride)
  on_predictions = None
  if prediction_dir:
    os.makedirs(prediction_dir, exist_ok=True)

    def on_predictions(batch, predictions):
      save_predictions(prediction_dir, batch, predictions,
                       builder.info.metadata.get("class_colours"))
  try:
    confusion = scorer.confusion(variables, on_predictions)
  except (flax_errors.ScopeParamShapeError, flax_errors.ScopeParamNotFoundError) as error:
    raise ValueError(
        f"the checkpoint of {workdir} does not fit the model this config builds "
        f"(config.model.name={config.model.name!r}; {str(error).splitlines()[0]}): the "
        f"run was trained with another model; leave out --config to use the run's own "
        f"config ({os.path.join(workdir, 'config.json')})") from None
  iou = metrics.per_class_iou(confusion)
  return {
      "miou": metrics.mean_iou(confusion),
      "per_class_iou": {name: float(v) for name, v in zip(class_names, iou)},
      "step": step, "split": split, "checkpoint": str(checkpoint),
      "model": "teacher" if use_teacher else "student", "flip": flip,
      "window": list(window) if window else None,
      "num_images": builder.info.splits[split].num_examples,
      "dataset": config.data.name, "confusion": confusion.tolist(),
  }


def markdown_table(results: dict) -> str:
  lines = [f"| class | IoU % ({results['split']}, step {results['step']}) |", "|---|---|"]
  lines += [f"| {name} | {100 * value:.2f} |" for name, value in
            results["per_class_iou"].items()]
  lines.append(f"| **mIoU** | **{100 * results['miou']:.2f}** |")
  return "\n".join(lines) + "\n"


def _pair(text: str, flag: str) -> tuple[int, int] | None:
  """``--flag=H,W`` as two positive ints; None for ''."""
  if not text:
    return None
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    values = ()
  if len(values) != 2 or min(values) < 1:
    raise app.UsageError(f"{flag}={text}: expected two positive whole numbers H,W "
                         f"(e.g. {flag}=256,256)")
  return values


FLAGS = flags.FLAGS
SAVED_CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_config.py")


def config_argv(argv: Sequence[str]) -> list[str]:
  """The command line with the run's saved config in place of an omitted ``--config``
  (``--workdir=W`` gives ``--config=.../saved_config.py:W``) or of ``--config=FILE.json``;
  other command lines are returned unchanged. ``--config.KEY=VALUE`` overrides stay."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith("--config=") and arg.endswith(".json"):
      argv[i] = f"--config={SAVED_CONFIG_FILE}:{arg[len('--config='):]}"
      return argv
    if arg.startswith("--config=") or arg == "--config":
      return argv
  workdirs = [arg[len("--workdir="):] for arg in argv if arg.startswith("--workdir=")]
  if workdirs:
    argv.insert(1, f"--config={SAVED_CONFIG_FILE}:{workdirs[-1]}")
  return argv


def define_checkpoint_flags() -> None:
  """Flags shared by evaluate.py and predict.py: which run, checkpoint and network.
  (Defined only when a tool runs as a program, so importing both defines nothing.)"""
  config_flags.DEFINE_config_file(
      "config", None, "The run's config: a config file (configs/*.py), or the run's "
      "config.json; default: the one the run saved in --workdir.", lock_config=True)
  flags.DEFINE_string("workdir", None, "The run's directory (with checkpoints/).")
  flags.DEFINE_string("checkpoint", "latest", "latest, best, or a step number.")
  flags.DEFINE_enum("model", "teacher", ["teacher", "student"], "Which network.")
  flags.DEFINE_bool("flip", False, "Average the logits with the mirrored image's.")


def define_flags() -> None:
  define_checkpoint_flags()
  flags.DEFINE_string("split", None, "Split to evaluate (default config.data.eval_split).")
  flags.DEFINE_string("window", "", "Sliding window H,W ('' = whole images).")
  flags.DEFINE_string("window_stride", "", "Window offsets H,W (default 2/3 of the window).")
  flags.DEFINE_string("output", "", "Write the results as JSON here.")
  flags.DEFINE_string("markdown", "", "Write the per-class table as Markdown here.")
  flags.DEFINE_string("predictions_dir", "", "Write palette PNG predictions into this "
                      "directory.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --output or --markdown file, "
                    "or the files already in --predictions_dir.")


def check_outputs(config: ml_collections.ConfigDict, workdir: str, output: str,
                  markdown: str, predictions_dir: str, overwrite: bool) -> None:
  """Refuses, before any work, output paths inside the dataset's folders or over the
  run's own files, and existing ones without ``overwrite`` (``outputs``)."""
  data_folders = {"the dataset folder (config.data.manual_dir)": config.data.manual_dir,
                  "the prepared datasets (config.data.data_dir)": config.data.data_dir}
  outputs.check_output_file(output, "--output", workdir, overwrite, data_folders)
  outputs.check_output_file(markdown, "--markdown", workdir, overwrite, data_folders)
  if output and markdown and os.path.abspath(output) == os.path.abspath(markdown):
    raise app.UsageError(f"--output and --markdown are the same file ({output})")
  outputs.check_output_folder(predictions_dir, "--predictions_dir", workdir, overwrite,
                              data_folders=data_folders)


def main(argv: Iterable[str]) -> None:
  if len(list(argv)) > 1:
    raise app.UsageError("unexpected arguments")
  logging.set_verbosity(logging.INFO)
  window = _pair(FLAGS.window, "--window")
  window_stride = _pair(FLAGS.window_stride, "--window_stride")
  check_outputs(FLAGS.config, FLAGS.workdir, FLAGS.output, FLAGS.markdown,
                FLAGS.predictions_dir, FLAGS.overwrite)
  results = evaluate_checkpoint(
      FLAGS.config, FLAGS.workdir, FLAGS.checkpoint, FLAGS.split, FLAGS.model == "teacher",
      FLAGS.flip, window, window_stride, FLAGS.predictions_dir or None)
  confusion = np.asarray(results["confusion"])
  print(f"{results['model']} at step {results['step']} ({results['checkpoint']}), "
        f"{results['split']} split, {results['num_images']} images:")
  print(metrics.format_iou_table(confusion, list(results["per_class_iou"])))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)
  if FLAGS.markdown:
    with open(FLAGS.markdown, "w") as f:
      f.write(markdown_table(results))


def run() -> None:
  """The ``cowmix-evaluate`` console script: ``python -m cowmix_jax.evaluate``."""
  define_flags()
  flags.mark_flags_as_required(["workdir"])
  cli.run_absl(main, config_argv(sys.argv))


if __name__ == "__main__":
  run()
