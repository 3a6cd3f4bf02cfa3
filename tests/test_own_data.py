"""The README's "Your own data" walk, run as written on a binary-mask folder made here:
0/255 PNG masks, grey JPEG images, unlabelled train images, configs/folder.py."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks.own_data_walk import readme_walk

from conftest import REPO

SIZE = (40, 56)
# Only the length is changed from the README's command (a real run takes minutes).
SHORT = ["--config.num_train_steps=4", "--config.eval_every=2", "--config.checkpoint_every=2",
         "--config.log_every=1"]


def write_polyps(root, rng):
  """Grey JPEG images with a bright blob, 0/255 PNG masks: 6 labelled and 3 unlabelled
  train images, 3 validation images. Returns ``{split: {id: class-id mask}}`` of the
  labelled images."""
  rows, cols = np.mgrid[0:SIZE[0], 0:SIZE[1]]
  masks = {"train": {}, "validation": {}}
  for split, count, labelled in (("train", 9, 6), ("validation", 3, 3)):
    for index in range(count):
      centre = rng.uniform(10, 30), rng.uniform(10, 46)
      radius = rng.uniform(5, 10)
      mask = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2)
      image = np.clip(60 + 120 * mask + rng.normal(0, 20, SIZE), 0, 255).astype(np.uint8)
      image_id = f"case{split[0]}{index:03d}"
      os.makedirs(root / split / "images", exist_ok=True)
      Image.fromarray(image).save(root / split / "images" / f"{image_id}.jpg", quality=90)
      if index < labelled:
        os.makedirs(root / split / "labels", exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / split / "labels" /
                                                          f"{image_id}.png")
        masks[split][image_id] = mask.astype(np.uint8)
  return masks


@pytest.mark.slow  # three tool runs with a pretrained encoder: minutes of CPU
def test_the_readme_walk_trains_evaluates_and_predicts_a_binary_mask_folder(tmp_path):
  masks = write_polyps(tmp_path / "polyps", np.random.default_rng(0))
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")  # as in a checkout
  path = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])  # "python"
  env = dict(os.environ, PATH=path, JAX_PLATFORMS="cpu", XLA_FLAGS="",
             TFDS_DATA_DIR=str(tmp_path / "tfds"), COWMIX_JAX_CACHE=str(tmp_path / "cache"))
  lines = readme_walk()
  assert len(lines) == 4 and "cowmix_jax.main" in lines[1], lines
  logs = []
  for line in lines:
    if "cowmix_jax.main" in line:
      line += " " + " ".join(SHORT)
    done = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, (line, done.stderr[-3000:])
    logs.append(done.stderr)

  work = tmp_path / "workdirs" / "polyps"
  results = json.loads((work / "results.json").read_text())
  assert set(results["per_class_iou"]) == {"background", "polyp"}
  # Training saw the polyps: the start-up table's share of class 1 is the masks' 255s.
  share = re.search(r"\npolyp\s+([\d.]+)\s+(\d+)\n", logs[1])
  expected = 100 * np.mean([m.mean() for m in masks["train"].values()])
  assert share and float(share.group(1)) == pytest.approx(expected, abs=0.01)
  assert int(share.group(2)) == 6
  # What configs/folder.py derived from the images.
  config = json.loads((work / "config.json").read_text())
  assert config["data"]["augment"]["crop_size"] == list(SIZE)
  assert config["data"]["eval_canvas"] == list(SIZE)
  side = min(SIZE)
  assert config["mask"]["cow_sigma_range"] == [round(4 * side / 360, 2),
                                               round(16 * side / 360, 2)]
  # The evaluation tool reproduces the best periodic evaluation of the run.
  best = json.loads((work / "best.json").read_text())
  assert best["step"] == results["best_step"]
  assert best["miou"] == pytest.approx(results["best_miou"], abs=1e-6)
  # One class-id PNG (and an overlay) per validation image, at the image's size.
  for image_id, mask in masks["validation"].items():
    predicted = np.asarray(Image.open(work / "predicted" / f"{image_id}.png"))
    assert predicted.shape == mask.shape and set(np.unique(predicted)) <= {0, 1}
    assert (work / "predicted" / f"{image_id}_overlay.png").exists()
