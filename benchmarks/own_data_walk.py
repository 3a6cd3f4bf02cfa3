"""The README's "Your own data" walk at a real size: time, peak memory, classes learned.

python -m benchmarks.own_data_walk --root=/tmp/walk [--size=512] [--labelled=20] \\
    [--unlabelled=30] [--validation=10] [--output=docs/benchmark_own_data_walk.json]

Makes a folder of ``size x size`` grey JPEG images, each with a few bright blobs, and
0/255 PNG masks of the blobs (``labelled`` train images with masks, ``unlabelled``
without, ``validation`` with), then runs the README's training command on it exactly as
written (``configs/folder.py``, its defaults) and records the wall time (start to
finish: preparation, compilation and evaluations included), the training time, the peak
resident memory of the training process, the steps it chose and the final per-class
IoU (both classes learned: background and the blobs above 50% IoU). Run it with nothing
else on the machine; the result names the machine.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import time

import numpy as np
from absl import flags
from PIL import Image

from benchmarks import machine
from cowmix_jax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blob_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
  """A grey ``[size, size]`` uint8 image with 1-3 bright discs on textured noise and its
  0/255 mask of the discs."""
  rows, cols = np.mgrid[0:size, 0:size]
  mask = np.zeros((size, size), bool)
  for _ in range(rng.integers(1, 4)):
    centre = rng.uniform(0.15 * size, 0.85 * size, 2)
    radius = rng.uniform(0.05 * size, 0.15 * size)
    mask |= (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2
  image = 70 + 90 * mask + rng.normal(0, 25, (size, size))
  return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def write_folder(root: str, size: int, labelled: int, unlabelled: int, validation: int,
                 seed: int = 0) -> None:
  """The README's layout: classes.json with values 0/255, train/ and validation/."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "classes.json"), "w") as f:
    json.dump([{"name": "background", "value": 0}, {"name": "blob", "value": 255}], f)
  for split, count, with_masks in (("train", labelled + unlabelled, labelled),
                                   ("validation", validation, validation)):
    os.makedirs(os.path.join(root, split, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, split, "labels"), exist_ok=True)
    for index in range(count):
      image, mask = blob_image(rng, size)
      name = f"{split}_{index:03d}"
      Image.fromarray(image).save(os.path.join(root, split, "images", name + ".jpg"),
                                  quality=90)
      if index < with_masks:
        Image.fromarray(mask).save(os.path.join(root, split, "labels", name + ".png"))


def readme_walk() -> list[str]:
  """The lines of the first bash block after the README's "## Your own data"."""
  text = open(os.path.join(REPO, "README.md")).read()
  section = text[text.index("\n## Your own data\n"):]
  block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
  return [line for line in block.splitlines() if line.strip()]


def readme_training_command() -> str:
  """The training line of the README's "Your own data" block."""
  return next(line for line in readme_walk() if "cowmix_jax.main" in line)


FLAGS = cli.new_flags()
flags.DEFINE_string("root", None, "an empty directory for the folder and the run",
                    flag_values=FLAGS)
flags.DEFINE_integer("size", 512, "image side in pixels", flag_values=FLAGS)
flags.DEFINE_integer("labelled", 20, "labelled train images", flag_values=FLAGS)
flags.DEFINE_integer("unlabelled", 30, "unlabelled train images", flag_values=FLAGS)
flags.DEFINE_integer("validation", 10, "validation images", flag_values=FLAGS)
flags.DEFINE_string("output", "", "write the measurement as JSON here", flag_values=FLAGS)
flags.mark_flag_as_required("root", flag_values=FLAGS)


def main(argv=None) -> int:
  cli.parse(FLAGS, argv, __doc__)
  root = os.path.abspath(FLAGS.root)
  if os.path.exists(os.path.join(root, "polyps")) or os.path.exists(
      os.path.join(root, "workdirs")):
    raise SystemExit(f"--root={root} already holds a walk; give an empty directory")
  os.makedirs(os.path.join(root, "polyps"))
  os.symlink(os.path.join(REPO, "configs"), os.path.join(root, "configs"))
  write_folder(os.path.join(root, "polyps"), FLAGS.size, FLAGS.labelled, FLAGS.unlabelled,
               FLAGS.validation)
  command = readme_training_command()
  print(f"+ {command}", flush=True)
  env = dict(os.environ, TFDS_DATA_DIR=os.path.join(root, "tfds"))
  start = time.time()
  with open(os.path.join(root, "train.log"), "w") as log:
    done = subprocess.run(["bash", "-c", command], cwd=root, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
  seconds = time.time() - start
  peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  if done.returncode != 0:
    raise SystemExit(f"training failed (exit {done.returncode}); see {root}/train.log")
  work = os.path.join(root, "workdirs", "polyps")
  results = json.load(open(os.path.join(work, "results.json")))
  config = json.load(open(os.path.join(work, "config.json")))
  record = {
      "machine": machine.describe(), "command": command, "images": FLAGS.size,
      "labelled": FLAGS.labelled, "unlabelled": FLAGS.unlabelled,
      "validation": FLAGS.validation, "wall_seconds": round(seconds, 1),
      "peak_rss_gib": round(peak_kib / 2**20, 2), "steps": results["step"],
      "train_seconds": round(results["train_seconds"], 1),
      "train_steps_per_second": round(results["step"] / results["train_seconds"], 2),
      "downscale": config["data"]["downscale"], "batch_size": config["batch_size"],
      "unlabelled_batch_size": config["unlabelled_batch_size"],
      "miou": results["miou"], "per_class_iou": results["per_class_iou"],
      "both_classes_learned": all(v > 0.5 for v in results["per_class_iou"].values()),
  }
  print(json.dumps(record, indent=1))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(record, f, indent=1)
  return 0 if record["both_classes_learned"] else 1


if __name__ == "__main__":
  cli.run(main)
