"""End to end: the command line trains, evaluates and is reproducible."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.num_train_steps=4", "--config.log_every=2", "--config.data.image_size=32",
        "--config.data.num_train=16", "--config.data.num_validation=8",
        "--config.data.num_labelled=4", "--config.batch_size=2",
        "--config.unlabelled_batch_size=2", "--config.eval_batch_size=4",
        "--config.model.width=4", "--config.model.decoder_widths=(8,8,8,8,8,8)",
        "--config.confidence.mode=none"]


def _run(workdir, *extra):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "cowmix_jax.main", "--config=configs/synthetic.py",
             f"--workdir={workdir}", *TINY, *extra]
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_same_config_and_seed_give_the_same_run(tmp_path):
  outputs = [_run(tmp_path / name) for name in ("a", "b")]
  for out in outputs:
    assert out.returncode == 0, out.stderr[-3000:]
  results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("a", "b")]
  assert results[0]["per_class_iou"] == results[1]["per_class_iou"]
  assert results[0]["step"] == 4 and results[0]["method"] == "cowmix"
  # The printed final mIoU is the saved one, and the mean of the per-class IoUs.
  printed = float(re.search(r"Final teacher validation mIoU: ([\d.]+)%", outputs[0].stdout)[1])
  per_class = np.array(list(results[0]["per_class_iou"].values()), float)
  assert abs(printed - 100 * results[0]["miou"]) < 0.01
  assert abs(results[0]["miou"] - np.nanmean(per_class)) < 1e-9
  # The step losses printed along the way are identical too.
  losses = [re.findall(r"step 4/4 +(.*?) +[\d.]+ steps/s", o.stderr) for o in outputs]
  assert losses[0] and losses[0] == losses[1]
  labelled = json.loads((tmp_path / "a" / "labelled_ids.json").read_text())
  assert len(labelled) == 4


def test_bad_config_value_is_a_clear_error(tmp_path):
  out = _run(tmp_path / "bad", "--config.method=mixup")
  assert out.returncode != 0
  assert "config.method='mixup'" in out.stderr and "cowmix" in out.stderr
