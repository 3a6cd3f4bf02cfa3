"""End to end: the command line trains, evaluates and is reproducible."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, SHARED_CAMVID, tiny_flags

TINY = tiny_flags({"num_train_steps": "4", "log_every": "2"})
TINY_MODEL = ["--config.model.depth=18", "--config.model.width=4",
              "--config.model.decoder_widths=(8,8,8,8,8,8)"]


def _run(workdir, *extra, config="configs/synthetic.py", flags=TINY):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "cowmix_jax.main", f"--config={config}",
             f"--workdir={workdir}", f"--config.data.data_dir={workdir.parent / 'tfds'}",
             *flags, *extra]
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_same_config_and_seed_give_the_same_run(tmp_path):
  """Two identical runs end identically. Their length is given in epochs: 16 training
  images at batch 2 make an 8-step epoch, so 0.5 epochs are 4 steps and an evaluation
  every 0.25 epochs is one every 2 steps; results.json keeps the final teacher mIoU and
  the best of the evaluations (the log's lines), with its step."""
  flags = [f for f in TINY if not f.startswith("--config.num_train_steps")]
  outputs = [_run(tmp_path / name, "--config.num_epochs=0.5", "--config.eval_every_epochs=0.25",
                  flags=flags) for name in ("a", "b")]
  for out in outputs:
    assert out.returncode == 0, out.stderr[-3000:]
  results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("a", "b")]
  assert results[0]["per_class_iou"] == results[1]["per_class_iou"]
  assert results[0]["step"] == 4 and results[0]["method"] == "cowmix"
  history = {int(step): float(miou) for step, miou in re.findall(
      r"step (\d+)\s+validation mIoU: teacher ([\d.]+)", outputs[0].stderr)}
  assert sorted(history) == [2, 4]
  assert abs(100 * results[0]["miou"] - history[4]) < 0.01
  best_step = max(history, key=lambda step: (history[step], -step))
  assert results[0]["best_step"] == best_step
  assert abs(100 * results[0]["best_miou"] - history[best_step]) < 0.01
  # The printed final mIoU is the saved one, and the mean of the per-class IoUs.
  printed = float(re.search(r"Final teacher validation mIoU: ([\d.]+)%", outputs[0].stdout)[1])
  per_class = np.array(list(results[0]["per_class_iou"].values()), float)
  assert abs(printed - 100 * results[0]["miou"]) < 0.01
  assert abs(results[0]["miou"] - np.nanmean(per_class)) < 1e-9
  # The step losses printed along the way are identical too.
  losses = [re.findall(r"step 4/4 \(100%\)[^\n]*?  (\w+=[^\n]*)", o.stderr)
            for o in outputs]
  assert losses[0] and losses[0] == losses[1]
  labelled = json.loads((tmp_path / "a" / "labelled_ids.json").read_text())
  assert len(labelled["ids"]) == 4


def test_bad_config_value_is_a_clear_error(tmp_path):
  out = _run(tmp_path / "bad", "--config.method=mixup")
  assert out.returncode != 0
  assert "config.method='mixup'" in out.stderr and "cowmix" in out.stderr


@pytest.mark.slow  # minutes of CPU: run by .ci/run after the default suite
@pytest.mark.skipif(not os.path.isdir(SHARED_CAMVID),
                    reason="the shared CamVid copy (../shared/data/camvid) is not present")
def test_camvid_config_builds_once_and_trains_on_the_real_data(tmp_path):
  # The config counts 300 epochs; num_epochs=0 hands the length back to num_train_steps.
  flags = [f"--config.data.manual_dir={SHARED_CAMVID}", "--config.num_epochs=0",
           "--config.eval_every_epochs=0", "--config.num_train_steps=2",
           "--config.log_every=1", "--config.eval_batch_size=8", *TINY_MODEL,
           # A 4-wide ResNet-18 has no pretrained weights: random init, BatchNorm learning.
           "--config.model.pretrained=none", "--config.model.freeze_bn=False"]
  first = _run(tmp_path / "a", config="configs/camvid.py", flags=flags)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "Preparing camvid" in first.stderr
  second = _run(tmp_path / "b", config="configs/camvid.py", flags=flags)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Preparing camvid" not in second.stderr, "the prepared dataset is reused"
  results = json.loads((tmp_path / "b" / "results.json").read_text())
  assert results["dataset"] == "camvid" and results["step"] == 2
  assert len(results["per_class_iou"]) == 11 and "bicyclist" in results["per_class_iou"]
  labelled = json.loads((tmp_path / "b" / "labelled_ids.json").read_text())
  assert len(labelled["ids"]) == 30 and labelled["num_available"] == 367
  assert "30 labelled images of 367" in second.stderr


def _last_line(text):
  return text.strip().splitlines()[-1]


def test_bad_values_stop_in_one_line_before_the_workdir_is_created(tmp_path):
  """num_train_steps 0 used to "succeed" with the untrained net, cons_weight -1 to
  train; both are named at once, with status 2, and nothing is written."""
  out = _run(tmp_path / "bad", "--config.num_train_steps=0", "--config.cons_weight=-1")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert "2 settings cannot work" in out.stderr
  assert "config.num_train_steps=0 must be in [1, inf]" in out.stderr
  assert "config.cons_weight=-1.0 must be in [0, inf]" in out.stderr
  assert not (tmp_path / "bad").exists()


def test_unknown_config_key_is_one_line_with_did_you_mean_and_verbose_shows_more(tmp_path):
  out = _run(tmp_path / "x", "--config.num_train_step=3")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert _last_line(out.stderr) == (
      'main.py: --config.num_train_step: the config has no key \'num_train_step\'. Did you '
      'mean "num_train_steps" instead of "num_train_step"?')
  verbose = _run(tmp_path / "x", "--config.num_train_step=3", "--verbose")
  assert verbose.returncode == 2 and "Traceback" in verbose.stderr  # the same status


def test_a_bad_labelled_ids_file_stops_before_anything_is_written_and_a_fix_reruns(tmp_path):
  workdir = tmp_path / "run"
  missing = _run(workdir, f"--config.data.labelled_ids_file={tmp_path / 'none.txt'}")
  assert missing.returncode == 1 and "Traceback" not in missing.stderr
  assert "none.txt' does not exist" in _last_line(missing.stderr)
  assert not workdir.exists()
  ids = tmp_path / "ids.txt"
  ids.write_text("train_00001\ntrain_00099\n")  # 16 training images: 00099 is not one
  unknown = _run(workdir, f"--config.data.labelled_ids_file={ids}")
  assert unknown.returncode != 0 and "train_00099" in _last_line(unknown.stderr)
  assert not workdir.exists()
  # A workdir a failed run left without a checkpoint never blocks a corrected rerun.
  workdir.mkdir()
  (workdir / "config.json").write_text('{"seed": 12345}')
  ids.write_text("train_00001\ntrain_00003\n")
  fixed = _run(workdir, f"--config.data.labelled_ids_file={ids}")
  assert fixed.returncode == 0, fixed.stderr[-3000:]
  labelled = json.loads((workdir / "labelled_ids.json").read_text())["ids"]
  assert labelled == ["train_00001", "train_00003"]
