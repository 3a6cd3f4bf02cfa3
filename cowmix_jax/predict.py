"""Segment a folder of arbitrary images with a checkpoint.

python -m cowmix_jax.predict --workdir=DIR --input=IMAGES --output=OUT \\
    [--config=configs/X.py] [--checkpoint=latest|best|STEP] [--model=teacher|student] \\
    [--flip] [--overlay_alpha=0.5]

Writes ``OUT/<name>.png``: a palette PNG whose pixel values are the class ids (viewers
show the dataset's colours), and ``OUT/<name>_overlay.png``: the image blended with the
coloured prediction. Without ``--config`` the run's saved config (``DIR/config.json``)
is used, overrides on top. Images of any size are padded to a multiple of 32 and the
prediction is cropped back; the dataset itself is not needed beyond its class list.
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

from cowmix_jax import cli, evaluate, models, reporting, sharding
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


def predict_folder(config: ml_collections.ConfigDict, workdir: str, input_dir: str,
                   output_dir: str, checkpoint: str = "latest", use_teacher: bool = True,
                   flip: bool = False, overlay_alpha: float = 0.5) -> list[str]:
  """Writes a label PNG and an overlay per image of ``input_dir``; returns the ids."""
  images = list_input_images(input_dir)
  metadata = builders.prepare(config.data).info.metadata
  num_classes = len(metadata["class_names"])
  palette = reporting.palette_of(metadata, num_classes)
  mesh = sharding.make_mesh(1)
  model = models.build_model(config.model, num_classes)
  variables, step = evaluate.restore_variables(workdir, mesh, checkpoint, use_teacher)
  logits_fn = jax.jit(make_logits_fn(model, flip=flip))
  os.makedirs(output_dir, exist_ok=True)
  logging.info("Segmenting %d images with the %s at step %d.", len(images),
               "teacher" if use_teacher else "student", step)
  normalisation = models.input_normalisation(config.model)
  for image_id, path in images.items():
    image = base.image_array(base.read_file(path), path)
    prediction = predict_image(logits_fn, variables, image, normalisation,
                               config.data.downscale)
    write_prediction(output_dir, image_id, image, prediction, palette, overlay_alpha)
  return list(images)


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
  reporting.save_label_png(os.path.join(output_dir, image_id + ".png"), prediction, palette)
  colours = reporting.colourise(prediction[None], palette)[0].astype(np.float32)
  overlay = (1 - overlay_alpha) * image.astype(np.float32) + overlay_alpha * colours
  Image.fromarray(np.clip(np.round(overlay), 0, 255).astype(np.uint8)).save(
      os.path.join(output_dir, image_id + "_overlay.png"))


FLAGS = flags.FLAGS


def define_flags() -> None:
  evaluate.define_checkpoint_flags()
  flags.DEFINE_string("input", None, "A directory of images.")
  flags.DEFINE_string("output", None, "Where to write the label PNGs and overlays.")
  flags.DEFINE_float("overlay_alpha", 0.5, "Weight of the colours in the overlays.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  ids = predict_folder(FLAGS.config, FLAGS.workdir, FLAGS.input, FLAGS.output,
                       FLAGS.checkpoint, FLAGS.model == "teacher", FLAGS.flip,
                       FLAGS.overlay_alpha)
  print(f"Wrote {len(ids)} predictions to {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["workdir", "input", "output"])
  cli.run_absl(main, evaluate.config_argv(sys.argv))
