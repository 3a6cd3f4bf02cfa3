"""Segment a folder of arbitrary images with a checkpoint.

python -m cowmix_jax.predict --workdir=DIR --input=IMAGES --output_dir=OUT \\
    [--checkpoint=latest|best|STEP] [--model=teacher|student] [--flip] \\
    [--overlay_alpha=0.5] [--overwrite] [--strict]

For example, the README's demo run on a folder of your images (any size; here
my_images)::

  python -m cowmix_jax.predict --workdir=workdirs/synthetic --input=my_images \\
      --output_dir=workdirs/synthetic/predicted

Writes ``OUT/<name>.png``: a palette PNG whose pixel values are the class ids (viewers
show the dataset's colours), and ``OUT/<name>_overlay.png``: the image blended with the
coloured prediction. Only the run is needed: its checkpoint, its saved config
(``DIR/config.json``, overrides on top) and its class list (``DIR/classes.json``), not
the dataset. Images of any size are padded to a multiple of 32 and the prediction is
cropped back.

Nothing of the user's is overwritten: an output folder that is the input folder or
inside it is refused, and so are existing prediction files unless ``--overwrite``
says so. An unreadable image is skipped with one line (``--strict`` stops there).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from PIL import Image

from cowmix_jax import cli, evaluate, models, outputs, reporting, sharding
from cowmix_jax.data import base, builders, pipeline
from cowmix_jax.evaluator import make_logits_fn


def list_input_images(directory: str) -> dict[str, str]:
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"--input={directory!r} is not a directory of images")
  images = base.list_images(directory)
  if not images:
    raise FileNotFoundError(f"--input={directory!r} holds no images "
                            f"({', '.join(base.IMAGE_SUFFIXES)})")
  return images


def output_files(image_id: str) -> tuple[str, str]:
  """The files written for one image: its label PNG and its overlay."""
  return image_id + ".png", image_id + "_overlay.png"


def check_output_dir(input_dir: str, output_dir: str, image_ids, overwrite: bool,
                     workdir: str | None = None) -> None:
  """Refuses an output folder that is the input folder or inside it, or inside the
  run's checkpoints, and (without ``overwrite``) one that already holds a file this
  run would write (``outputs.check_output_folder``).

  Also refuses inputs whose outputs would share a name (images ``c`` and ``c_overlay``:
  the overlay of one is the label file of the other), which would silently replace one
  with the other.

  Raises:
    app.UsageError naming the folders or the files, and the fix.
  """
  writers: dict[str, list[str]] = {}
  for image_id in image_ids:
    for name in output_files(image_id):
      writers.setdefault(name, []).append(image_id)
  shared = {name: ids for name, ids in writers.items() if len(ids) > 1}
  if shared:
    name, ids = next(iter(shared.items()))
    raise app.UsageError(
        f"--input={input_dir}: the images {' and '.join(ids)} would both be written as "
        f"{name} ({len(shared)} such name(s)); rename one of them (an image called "
        f"NAME_overlay clashes with NAME's overlay)")
  outputs.check_output_folder(
      output_dir, "--output_dir", workdir, overwrite,
      would_write=[name for image_id in image_ids for name in output_files(image_id)],
      data_folders={"the input folder (--input)": input_dir})


def run_classes(config: ml_collections.ConfigDict, workdir: str
                ) -> tuple[list[str], list | None]:
  """The run's class names and colours: ``workdir/classes.json`` (training writes it),
  else, for a run from before that file, the prepared dataset's."""
  saved = reporting.read_classes(workdir)
  if saved is not None:
    return saved
  metadata = builders.prepare(config.data).info.metadata
  return list(metadata["class_names"]), metadata.get("class_colours")


def predict_folder(config: ml_collections.ConfigDict, workdir: str, input_dir: str,
                   output_dir: str, checkpoint: str = "latest", use_teacher: bool = True,
                   flip: bool = False, overlay_alpha: float = 0.5, overwrite: bool = False,
                   strict: bool = False) -> tuple[list[str], list[str]]:
  """Writes a label PNG and an overlay per image of ``input_dir``; returns the ids
  written and the lines of the unreadable files skipped (``strict``: the first one
  raises instead)."""
  images = list_input_images(input_dir)
  check_output_dir(input_dir, output_dir, images, overwrite, workdir)
  class_names, colours = run_classes(config, workdir)
  palette = reporting.palette_of({"class_colours": colours}, len(class_names))
  mesh = sharding.make_mesh(1)
  model = models.build_model(config.model, len(class_names))
  variables, step = evaluate.restore_variables(workdir, mesh, checkpoint, use_teacher)
  logits_fn = jax.jit(make_logits_fn(model, flip=flip))
  os.makedirs(output_dir, exist_ok=True)
  logging.info("Segmenting %d images with the %s at step %d.", len(images),
               "teacher" if use_teacher else "student", step)
  normalisation = models.input_normalisation(config.model)
  written, skipped = [], []
  for image_id, path in images.items():
    try:
      image = base.image_array(base.read_file(path), path)
    except base.BadExampleError as error:
      if strict:
        raise
      skipped.append(str(error))
      print(f"skipped {error}", file=sys.stderr, flush=True)
      continue
    prediction = predict_image(logits_fn, variables, image, normalisation,
                               config.data.downscale)
    write_prediction(output_dir, image_id, image, prediction, palette, overlay_alpha)
    written.append(image_id)
  return written, skipped


def predict_image(logits_fn, variables, image: np.ndarray, normalisation: str,
                  downscale_factor: int = 1) -> np.ndarray:
  """uint8 ``[H, W, 3]`` -> uint8 ``[H, W]`` class ids. With ``downscale_factor`` > 1
  the network sees the shrunk image and its logits are upsampled to ``H x W``."""
  height, width = image.shape[:2]
  small, _ = pipeline.downscale(np.asarray(image, np.float32), None, downscale_factor)
  normalised = pipeline.normalise(small, normalisation).numpy()
  small_h, small_w = normalised.shape[:2]
  padded = np.pad(normalised, ((0, -small_h % 32), (0, -small_w % 32), (0, 0)))
  logits = logits_fn(variables, jnp.asarray(padded[None]))[:, :small_h, :small_w]
  if (small_h, small_w) != (height, width):
    logits = jax.image.resize(logits, (1, height, width, logits.shape[-1]), "bilinear")
  return np.asarray(jnp.argmax(logits[0], -1), np.uint8)


def write_prediction(output_dir: str, image_id: str, image: np.ndarray,
                     prediction: np.ndarray, palette: np.ndarray,
                     overlay_alpha: float) -> None:
  label_name, overlay_name = output_files(image_id)
  reporting.save_label_png(os.path.join(output_dir, label_name), prediction, palette)
  colours = reporting.colourise(prediction[None], palette)[0].astype(np.float32)
  overlay = (1 - overlay_alpha) * image.astype(np.float32) + overlay_alpha * colours
  Image.fromarray(np.clip(np.round(overlay), 0, 255).astype(np.uint8)).save(
      os.path.join(output_dir, overlay_name))


FLAGS = flags.FLAGS


def define_flags() -> None:
  evaluate.define_checkpoint_flags()
  flags.DEFINE_string("input", None, "A directory of images.")
  flags.DEFINE_string("output_dir", None, "The directory to write the label PNGs and "
                      "overlays into (created if missing; never the input folder).")
  flags.DEFINE_float("overlay_alpha", 0.5, "Weight of the colours in the overlays.")
  flags.DEFINE_bool("overwrite", False, "Replace prediction files already in --output_dir.")
  flags.DEFINE_bool("strict", False, "Stop at the first unreadable image instead of "
                    "skipping it.")


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  ids, skipped = predict_folder(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.output_dir,
                                FLAGS.checkpoint, FLAGS.model == "teacher", FLAGS.flip,
                                FLAGS.overlay_alpha, FLAGS.overwrite, FLAGS.strict)
  print(f"Wrote {len(ids)} predictions to {FLAGS.output_dir}"
        + (f"; skipped {len(skipped)} unreadable file(s) (listed above)" if skipped else ""))
  return 1 if not ids else 0


def run() -> None:
  """The ``cowmix-predict`` console script: ``python -m cowmix_jax.predict``."""
  define_flags()
  flags.mark_flags_as_required(["workdir", "input", "output_dir"])
  cli.run_absl(main, evaluate.config_argv(sys.argv))


if __name__ == "__main__":
  run()
