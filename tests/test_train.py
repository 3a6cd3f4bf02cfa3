"""Tests of cowmix_jax/train.py: exact resume after SIGKILL or SIGTERM, NaN handling,
the learning-rate schedule."""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cowmix_jax import method_keys, models, optimizers, steps, train
from cowmix_jax.checkpoints import Checkpointer
from cowmix_jax.cli import ConfigError
from cowmix_jax.state import create_train_state

from conftest import REPO, num_classes_of_run, tiny_flags

FLAGS = tiny_flags({"num_train_steps": "8", "checkpoint_every": "2", "log_every": "1"})


def _command(workdir, extra=()):
  """The tiny run's command with ``extra`` flags; TINY_RUN's settings that the method in
  ``extra`` does not read are left out (main refuses them)."""
  method = next((flag.split("=", 1)[1] for flag in extra
                 if flag.startswith("--config.method=")), "cowmix")
  flags = [flag for flag in FLAGS
           if method_keys.reads_key(flag[len("--config."):].split("=", 1)[0], method)]
  return [sys.executable, "-m", "cowmix_jax.main", "--config=configs/synthetic.py",
          f"--workdir={workdir}", f"--config.data.data_dir={workdir.parent / 'tfds'}", *flags,
          *extra]


def _env():
  return dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")


def _run(workdir, extra=()):
  out = subprocess.run(_command(workdir, extra), cwd=REPO, env=_env(), capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def _run_until(workdir, pattern, send, extra=()):
  """Starts a run, and sends ``send`` to it once a log line matches ``pattern``."""
  process = subprocess.Popen(_command(workdir, extra), cwd=REPO, env=_env(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  log = []
  for line in process.stderr:
    log.append(line)
    if re.search(pattern, line):
      process.send_signal(send)
      break
  log += process.stderr.readlines()
  process.wait(timeout=300)
  return process.returncode, "".join(log)


def _final_state(workdir, config):
  model = models.build_model(config.model, num_classes_of_run(workdir))
  template = create_train_state(model, optimizers.make_optimizer(config), jax.random.PRNGKey(0),
                                (1, 32, 32, 3))
  with Checkpointer(str(workdir)) as checkpointer:
    assert checkpointer.latest_step() == 8
    return checkpointer.restore(template)


def _assert_same_state(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # minutes of CPU: run by .ci/run after the default suite
@pytest.mark.parametrize("extra", [(), ("--config.method=unimatch", "--config.teacher=ema",
                                        "--config.mask.mix=cow")], ids=["cowmix", "unimatch"])
def test_killed_or_preempted_runs_resume_to_the_uninterrupted_state(tmp_path, tiny_config,
                                                                    extra):
  """Also for UniMatch with its EMA teacher (strong views, feature dropout, the
  teacher's warm-up all follow the step)."""
  tiny_config.model.width = 4
  _run(tmp_path / "straight", extra)
  reference = _final_state(tmp_path / "straight", tiny_config)

  # SIGKILL in the middle: no chance to save; the restart resumes from the last save.
  code, log = _run_until(tmp_path / "killed", r"step 5/8", signal.SIGKILL, extra)
  assert code == -signal.SIGKILL, log[-2000:]
  resumed = _run(tmp_path / "killed", extra)
  assert re.search(r"Resuming from the checkpoint at step [24]", resumed.stderr)
  _assert_same_state(_final_state(tmp_path / "killed", tiny_config), reference)

  # SIGTERM (preemption): a checkpoint is written at once, then the restart goes on.
  code, log = _run_until(tmp_path / "preempted", r"step 3/8", signal.SIGTERM, extra)
  assert code == 0 and "by SIGTERM; rerun the same command" in log, log[-2000:]
  stopped = int(re.search(r"Stopped at step (\d+) by SIGTERM", log)[1])
  with Checkpointer(str(tmp_path / "preempted")) as checkpointer:
    assert stopped in checkpointer.latest.all_steps()
  resumed = _run(tmp_path / "preempted", extra)
  assert f"Resuming from the checkpoint at step {stopped}" in resumed.stderr
  _assert_same_state(_final_state(tmp_path / "preempted", tiny_config), reference)
  results = [json.loads((tmp_path / name / "results.json").read_text())
             for name in ("straight", "killed", "preempted")]
  assert results[0]["per_class_iou"] == results[1]["per_class_iou"] == results[2]["per_class_iou"]


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config,
                                                                 monkeypatch):
  tiny_config.data.data_dir = str(tmp_path / "tfds")
  tiny_config.num_train_steps = 8
  tiny_config.checkpoint_every = 2
  tiny_config.log_every = 4
  make_train_step = steps.make_train_step

  def poisoned_train_step(*args, **kwargs):
    train_step = make_train_step(*args, **kwargs)

    def step_fn(state, batch):
      state, metrics = train_step(state, batch)
      if int(state.step) >= 3:  # from step 3 on the weights are NaN
        state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
        metrics = dict(metrics, loss=metrics["loss"] * jnp.nan)
      return state, metrics

    return step_fn

  monkeypatch.setattr(steps, "make_train_step", poisoned_train_step)
  # No timed progress line (one falls due after PROGRESS_SECONDS on a loaded machine and
  # would fetch step 3's metrics first): the loss is read at the logged step 4 and at
  # the checkpoint steps only.
  monkeypatch.setattr(train, "PROGRESS_SECONDS", float("inf"))
  with pytest.raises(FloatingPointError,
                     match=r"non-finite loss at step 4: .*loss=nan.*the last good checkpoint "
                           r"is step 2"):
    train.train_and_evaluate(tiny_config, str(tmp_path / "work"))
  model = models.build_model(tiny_config.model, 6)
  template = create_train_state(model, optimizers.make_optimizer(tiny_config),
                                jax.random.PRNGKey(0), (1, 32, 32, 3))
  with Checkpointer(str(tmp_path / "work")) as checkpointer:
    assert checkpointer.latest.all_steps() == [2]
    restored = checkpointer.restore(template)
  assert int(restored.step) == 2
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored.params))


DRIVER = """
import sys
from absl import app
from cowmix_jax import evaluator, main

def failing_evaluate(*args, **kwargs):
  raise RuntimeError("evaluation failed on purpose")

evaluator.Evaluator.confusion = failing_evaluate
app.run(main.main)
"""


def test_an_exception_during_training_ends_with_one_traceback_and_keeps_the_checkpoint(
    tmp_path, tiny_config):
  # The checkpoint of step 2 may still be writing (async) when step 3's evaluation raises:
  # the run must let it finish, close the checkpointer and the writers, and print the
  # error once, without the checkpointer's threads failing at interpreter shutdown.
  (tmp_path / "driver.py").write_text(DRIVER)
  workdir = tmp_path / "run"
  command = [sys.executable, str(tmp_path / "driver.py")] + _command(workdir)[3:] + [
      "--config.eval_every=3"]
  out = subprocess.run(command, cwd=REPO, env=dict(_env(), PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=900)
  assert out.returncode != 0
  assert out.stderr.count("Traceback") == 1, out.stderr[-5000:]
  assert out.stderr.rstrip().endswith("RuntimeError: evaluation failed on purpose"), \
      out.stderr[-3000:]
  assert "cannot schedule new futures" not in out.stderr
  tiny_config.model.width = 4
  model = models.build_model(tiny_config.model, num_classes_of_run(workdir))
  template = create_train_state(model, optimizers.make_optimizer(tiny_config),
                                jax.random.PRNGKey(0), (1, 32, 32, 3))
  with Checkpointer(str(workdir)) as checkpointer:
    assert checkpointer.latest_step() == 2
    assert int(checkpointer.restore(template).step) == 2


@pytest.mark.parametrize("change, message", [
    ({"data.eval_canvas": (16, 32)}, r"eval_canvas=\(16, 32\) \(H, W\) cannot hold every "
                                     r"validation image.*eval_canvas=auto"),
    ({"data.num_labelled": 40}, r"num_labelled=40: must be -1 \(all\) or between 1 and the "
                                r"32 training images"),
    ({"mask.cow_sigma_range": (4.0, 40.0)}, r"cow_sigma_range=\(4.0, 40.0\): sigma 40 is "
                                            r"larger than the crop's shorter side"),
    ({"data.eval_split": "test"}, r"eval_split='test': the dataset 'synthetic' has the "
                                  r"splits \['train', 'validation'\]"),
    ({"eval_batch_size": 3}, r"eval_batch_size=3"),
])
def test_settings_that_would_fail_later_stop_the_run_before_any_work(
    tmp_path, tiny_config, monkeypatch, change, message):
  def no_work(*args, **kwargs):
    raise AssertionError("the run got as far as building the model")

  monkeypatch.setattr(train, "initial_variables_and_optimizer", no_work)
  tiny_config.data.data_dir = str(tmp_path / "tfds")
  tiny_config.num_devices = 2  # the 8 simulated devices of conftest: 2 cannot share 3
  for key, value in change.items():
    section, name = key.rsplit(".", 1) if "." in key else ("", key)
    target = tiny_config
    for part in filter(None, section.split(".")):
      target = target[part]
    target[name] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(tiny_config, str(tmp_path / "work"))
  assert not (tmp_path / "work" / "config.json").exists()


def test_prefetching_changes_no_batch_and_no_result(tmp_path, tiny_config, monkeypatch):
  """With batches transferred ahead (config.prefetch_batches) every step gets the batch
  it gets without, and the run ends in the same state with the same scores."""
  tiny_config.data.data_dir = str(tmp_path / "tfds")
  tiny_config.num_train_steps = 4
  make_train_step = steps.make_train_step
  seen = []

  def recording_train_step(*args, **kwargs):
    train_step = make_train_step(*args, **kwargs)

    def step_fn(state, batch):
      seen[-1].append(jax.tree.map(np.asarray, batch))
      return train_step(state, batch)

    return step_fn

  monkeypatch.setattr(steps, "make_train_step", recording_train_step)
  runs = {}
  for size in (0, 3):
    seen.append([])
    tiny_config.prefetch_batches = size
    runs[size] = train.train_and_evaluate(tiny_config, str(tmp_path / f"prefetch_{size}"))
  without, with_prefetch = seen
  assert len(without) == len(with_prefetch) == 4
  for a, b in zip(without, with_prefetch):
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(without[0]["image"], without[1]["image"])  # batches do differ
  assert runs[0]["per_class_iou"] == runs[3]["per_class_iou"]
  model = models.build_model(tiny_config.model, 6)
  template = create_train_state(model, optimizers.make_optimizer(tiny_config),
                                jax.random.PRNGKey(0), (1, 32, 32, 3))
  states = []
  for size in (0, 3):
    with Checkpointer(str(tmp_path / f"prefetch_{size}")) as checkpointer:
      states.append(checkpointer.restore(template))
  for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_progress_lines_come_after_the_first_step_then_every_30_seconds_with_an_eta():
  now = [100.0]
  clock = train.ProgressClock(start_step=0, num_train_steps=1000, clock=lambda: now[0])
  assert clock.line_due()  # the first step always gets a line
  now[0] += 42.0  # compilation and the first step
  assert clock.line(1) == "step 1/1000 (0%)  first step (compilation included) took 42.0 s"
  now[0] += 10.0  # 20 more steps in 10 s
  assert not clock.line_due()
  now[0] += 20.0  # 30 s since the last line: due, whatever log_every says
  assert clock.line_due()
  # 60 steps after the first in 30 s: 2 steps/s, 940 steps left: 470 s = 8 min.
  assert clock.line(61) == "step 61/1000 (6%)  2.00 steps/s  ETA 8 min"
  assert not clock.line_due()
  assert train.format_duration(30) == "30 s" and train.format_duration(7500) == "2 h 05 min"


def test_a_workdir_inside_the_dataset_folder_is_refused_before_anything_is_written(
    tmp_path, tiny_config):
  """Before: --workdir equal to the folder dataset replaced the user's classes.json (and
  its 0/255 value mapping) with the run's, then failed over the file it had written."""
  data = tmp_path / "mine"
  data.mkdir()
  (data / "classes.json").write_text('[{"name": "bg", "value": 0}, {"name": "fg", "value": 255}]')
  tiny_config.data.manual_dir = str(data)
  tiny_config.data.data_dir = str(tmp_path / "tfds")
  for workdir in (data, data / "run"):
    with pytest.raises(ConfigError, match="overlap"):
      train.train_and_evaluate(tiny_config, str(workdir))
  assert sorted(os.listdir(data)) == ["classes.json"]
  assert json.loads((data / "classes.json").read_text())[1] == {"name": "fg", "value": 255}
  assert not (tmp_path / "tfds").exists()  # stopped before the data was prepared
