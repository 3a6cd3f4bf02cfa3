"""Tests of cowmix_jax/checkpoints.py: save/restore, best by mIoU, interrupted saves,
the saved config."""

import json
import os
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from cowmix_jax import checkpoints, models, optimizers, train
from cowmix_jax.checkpoints import (
  Checkpointer,
  CheckpointSaveError,
  check_config,
  load_config,
  save_config,
  workdir_path,
)
from cowmix_jax.state import create_train_state

from conftest import REPO, tiny_flags


def _state(config, seed=0, step=0):
  model = models.build_model(config.model, 6)
  tx = optimizers.make_optimizer(config)
  state = create_train_state(model, tx, jax.random.PRNGKey(seed), (1, 32, 32, 3))
  return state.replace(step=np.asarray(step, np.int32))


def _host(tree):
  return jax.tree.map(np.asarray, tree)


def _assert_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_restore_gives_back_the_saved_state_and_keeps_the_latest(tiny_config, tmp_path):
  states = {step: _host(_state(tiny_config, seed=step, step=step)) for step in (1, 2, 3)}
  with Checkpointer(str(tmp_path), keep=2) as checkpointer:
    assert checkpointer.restore(_state(tiny_config)) is None, "nothing to resume"
    for step in (1, 2, 3):
      checkpointer.save(states[step])
    checkpointer.wait()
    assert sorted(checkpointer.latest.all_steps()) == [2, 3]
  with Checkpointer(str(tmp_path)) as reopened:
    restored = reopened.restore(_state(tiny_config))
    assert int(restored.step) == 3
    _assert_equal(restored, states[3])
    _assert_equal(reopened.restore(_state(tiny_config), 2), states[2])
    with pytest.raises(ValueError, match="no checkpoint at step 1 .* \\[2, 3\\]"):
      reopened.restore(_state(tiny_config), 1)


def test_best_checkpoint_follows_the_highest_miou(tiny_config, tmp_path):
  states = {step: _host(_state(tiny_config, seed=step, step=step)) for step in (1, 2, 3)}
  with Checkpointer(str(tmp_path)) as checkpointer:
    assert checkpointer.save_if_best(states[1], 0.30)
    assert checkpointer.save_if_best(states[2], 0.45)
    assert not checkpointer.save_if_best(states[3], 0.40)
  with Checkpointer(str(tmp_path)) as reopened:
    assert reopened.best_miou == pytest.approx(0.45)
    _assert_equal(reopened.restore(_state(tiny_config), "best"), states[2])


def test_an_interrupted_save_leaves_the_previous_checkpoint_usable(tiny_config, tmp_path):
  good = _host(_state(tiny_config, seed=4, step=4))
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(good)
  # What a kill in the middle of saving step 6 leaves: orbax writes into a temporary
  # directory and renames it only when the save is complete.
  partial = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1795490000"
  (partial / "default").mkdir(parents=True)
  (partial / "default" / "_METADATA").write_text('{"tree_metadata": {')  # cut short
  with Checkpointer(str(tmp_path)) as reopened:
    assert reopened.latest_step() == 4
    _assert_equal(reopened.restore(_state(tiny_config)), good)


def _truncate_array_files(step_dir):
  """Cuts every array data file of a saved step to half its size."""
  files = [path for path in step_dir.rglob("*") if path.is_file() and path.parent.name == "d"]
  assert files
  for path in files:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated arrays", "no _METADATA"])
def test_a_checkpoint_that_does_not_restore_is_set_aside_and_the_one_before_resumes(
    damage, tiny_config, tmp_path, caplog):
  states = {step: _host(_state(tiny_config, seed=step, step=step)) for step in (1, 2)}
  with Checkpointer(str(tmp_path), keep=2) as checkpointer:
    for step in (1, 2):
      checkpointer.save(states[step])
  step_dir = tmp_path / "checkpoints" / "2"
  if damage == "truncated arrays":
    _truncate_array_files(step_dir)
  else:
    (step_dir / "default" / "_METADATA").unlink()
  with caplog.at_level("WARNING"), Checkpointer(str(tmp_path), keep=2) as checkpointer:
    restored = checkpointer.restore(_state(tiny_config))
    assert checkpointer.latest_step() == 1
  _assert_equal(restored, states[1])
  # Kept, not deleted; one line names the step, the place and the cause.
  assert not step_dir.exists() and (tmp_path / "corrupt_checkpoints" / "2").is_dir()
  lines = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0]
  assert lines[0].startswith("The checkpoint at step 2 does not restore (")
  assert str(tmp_path / "corrupt_checkpoints" / "2") in lines[0]


def test_when_no_checkpoint_restores_the_fresh_start_is_said(tiny_config, tmp_path, caplog):
  """Before: with every checkpoint corrupt, each was moved aside with "resuming from the
  one before" and the run then started from step 0 without a word."""
  with Checkpointer(str(tmp_path), keep=2) as checkpointer:
    for step in (1, 2):
      checkpointer.save(_host(_state(tiny_config, seed=step, step=step)))
  for step in (1, 2):
    _truncate_array_files(tmp_path / "checkpoints" / str(step))
  with caplog.at_level("WARNING"), Checkpointer(str(tmp_path), keep=2) as checkpointer:
    assert checkpointer.restore(_state(tiny_config)) is None
  messages = [r.getMessage() for r in caplog.records]
  assert sum("does not restore" in m for m in messages) == 2
  assert not [m for m in messages if "TensorStore({" in m], "tensorstore's specs shortened"
  assert messages[-1] == (f"No checkpoint in {tmp_path}/checkpoints restores (steps 2, 1 "
                          f"moved to {tmp_path}/corrupt_checkpoints): the run starts again "
                          "from the beginning.")


def test_a_run_whose_latest_checkpoint_is_truncated_resumes_exactly_from_the_one_before(
    tiny_config, tmp_path):
  """Steps 1-4 saved at 2 and 4; step 4's arrays are cut short; continuing to 6 steps
  restarts from step 2 and ends where an uninterrupted 6-step run ends."""
  tiny_config.checkpoint_every, tiny_config.keep_checkpoints = 2, 3
  tiny_config.data.data_dir = str(tmp_path / "tfds")
  tiny_config.num_train_steps = 4
  train.train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
  _truncate_array_files(tmp_path / "resumed" / "checkpoints" / "4")
  tiny_config.num_train_steps = 6
  train.train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
  train.train_and_evaluate(tiny_config, str(tmp_path / "straight"))
  final = []
  for name in ("resumed", "straight"):
    with Checkpointer(str(tmp_path / name)) as checkpointer:
      final.append(checkpointer.restore(_state(tiny_config)))
  assert int(final[0].step) == 6
  _assert_equal(final[0], final[1])
  assert (tmp_path / "resumed" / "corrupt_checkpoints" / "4").is_dir()


@pytest.fixture
def small_disk(tmp_path):
  """A 1.4 MB tmpfs: one tiny checkpoint (0.8-0.9 MB) fits, a second does not."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs",
                            str(mount_point)], capture_output=True, text=True)
  if mounted.returncode != 0:
    pytest.skip(f"a small filesystem needs mount (root): {mounted.stderr.strip()}")
  yield mount_point
  subprocess.run(["umount", "--lazy", str(mount_point)], check=False)


def _save_onto_a_full_disk(checkpointer, small_disk, states, save) -> None:
  """Saves ``states[1]`` as the latest, fills the disk but for a third of a checkpoint,
  then ``save(states[2])`` (which cannot fit) and polls until the failure is raised."""
  checkpointer.save(states[1])
  checkpointer.wait()
  size = sum(p.stat().st_size for p in (small_disk / "run").rglob("*") if p.is_file())
  free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
  (small_disk / "filler").write_bytes(b"\0" * max(0, free - size // 3))
  save(states[2])
  for _ in range(600):  # the failure shows as soon as the background save ends
    checkpointer.check_saves()
    time.sleep(0.05)


def test_a_save_on_a_full_disk_fails_once_and_the_previous_checkpoint_stays(
    tiny_config, small_disk, caplog):
  states = {step: _host(_state(tiny_config, seed=step, step=step)) for step in (1, 2)}
  workdir = str(small_disk / "run")
  with caplog.at_level("ERROR"):
    with pytest.raises(CheckpointSaveError) as error, Checkpointer(workdir) as checkpointer:
      _save_onto_a_full_disk(checkpointer, small_disk, states, checkpointer.save)
  message = str(error.value)
  assert "\n" not in message and f"into {workdir}/checkpoints failed" in message
  assert "No space left on device" in message
  assert "the latest complete checkpoint is step 1" in message
  assert not [r for r in caplog.records if "orbax" in r.pathname], "orbax's errors are quiet"
  with Checkpointer(workdir) as checkpointer:
    assert checkpointer.latest_step() == 1
    _assert_equal(checkpointer.restore(_state(tiny_config)), states[1])


def test_a_failed_save_of_the_best_names_the_checkpoint_a_rerun_resumes_from(
    tiny_config, small_disk):
  """Before: a failed save into best/ said "the latest complete checkpoint is none"
  (best/ had none) while checkpoints/ held step 1, which a rerun resumed from."""
  states = {step: _host(_state(tiny_config, seed=step, step=step)) for step in (1, 2)}
  workdir = str(small_disk / "run")
  with pytest.raises(CheckpointSaveError) as error, Checkpointer(workdir) as checkpointer:
    _save_onto_a_full_disk(checkpointer, small_disk, states,
                           lambda state: checkpointer.save_if_best(state, 0.5))
  message = str(error.value)
  assert f"into {workdir}/best failed" in message
  assert "the latest complete checkpoint is step 1" in message


def test_a_run_on_a_full_disk_stops_in_one_line_at_the_first_failed_save(small_disk):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  workdir = small_disk / "run"
  command = [sys.executable, "-m", "cowmix_jax.main", "--config=configs/synthetic.py",
             f"--workdir={workdir}", f"--config.data.data_dir={small_disk.parent / 'tfds'}",
             *tiny_flags({"num_train_steps": "8", "checkpoint_every": "1",
                          "image_every": "0"})]
  out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "RESOURCE_EXHAUSTED" in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f"main.py: saving a checkpoint into {workdir}/checkpoints failed")
  assert "No space left on device" in last and "latest complete checkpoint is step 1" in last
  assert out.stderr.count("No space left on device") <= 2  # this line and orbax's log
  assert "step 8" not in out.stderr  # it stopped at once, not at the end


def test_restart_with_a_different_config_says_what_differs(tiny_config, tmp_path):
  check_config(tiny_config, str(tmp_path))  # no run yet: nothing to differ from
  save_config(tiny_config, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["method"] == tiny_config.method
  tiny_config.num_train_steps = 50  # allowed: extend a run
  tiny_config.data.data_dir = "/elsewhere"  # allowed: the same data moved
  check_config(tiny_config, str(tmp_path))
  tiny_config.learning_rate = 0.5
  tiny_config.mask.cow_sigma_range = (2.0, 3.0)
  # Without a checkpoint (a run stopped before its first save) there is nothing to
  # continue: a corrected rerun goes ahead and writes its own config.
  check_config(tiny_config, str(tmp_path))
  (tmp_path / "checkpoints" / "5").mkdir(parents=True)
  with pytest.raises(ValueError) as error:
    check_config(tiny_config, str(tmp_path))
  message = str(error.value)
  assert "learning_rate: 0.001 in the workdir, now 0.5" in message
  assert "mask.cow_sigma_range" in message and "num_train_steps" not in message
  assert os.path.basename(str(tmp_path)) in message


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_a_decaying_learning_rate_keeps_its_length_on_resume(schedule, tiny_config,
                                                             tmp_path):
  """A cosine or poly rate decays over num_train_steps: a resumed run with another
  length would change the rate of every step still to come, so it is refused; the
  same length resumes."""
  tiny_config.lr_schedule, tiny_config.num_train_steps = schedule, 100
  save_config(tiny_config, str(tmp_path))
  (tmp_path / "checkpoints" / "5").mkdir(parents=True)
  check_config(tiny_config, str(tmp_path))
  tiny_config.num_train_steps = 200
  with pytest.raises(ValueError, match=rf"num_train_steps: 100 in the workdir, now 200 "
                                       rf"\(lr_schedule='{schedule}' decays over the run's "
                                       rf"length\)"):
    check_config(tiny_config, str(tmp_path))


def test_a_setting_the_runs_method_does_not_read_may_differ_on_resume(tiny_config, tmp_path):
  """A difference in a setting the saved run's method never reads (method_keys) cannot
  change the run, so it does not block the resume; one the method reads does."""
  assert tiny_config.method == "cowmix"
  save_config(tiny_config, str(tmp_path))
  (tmp_path / "checkpoints" / "5").mkdir(parents=True)
  tiny_config.strong_blur_sigma_range = (0.025, 0.5)  # read by fixmatch and unimatch only
  tiny_config.pseudo_label_threshold = 0.9
  check_config(tiny_config, str(tmp_path))
  tiny_config.method = "fixmatch"  # the method is read by every method
  with pytest.raises(ValueError) as error:
    check_config(tiny_config, str(tmp_path))
  assert "method: 'cowmix' in the workdir, now 'fixmatch'" in str(error.value)
  assert "strong_blur_sigma_range" in str(error.value)  # fixmatch reads it


def test_a_workdir_saved_before_a_setting_existed_holds_its_default(tiny_config, tmp_path):
  """An older config.json lacks strong_blur_sigma_range: its run trained with the
  default (0.1, 2.0), so resuming at the default goes ahead and another value is named."""
  tiny_config.method = "fixmatch"
  save_config(tiny_config, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["strong_blur_sigma_range"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  (tmp_path / "checkpoints" / "5").mkdir(parents=True)
  check_config(tiny_config, str(tmp_path))
  tiny_config.strong_blur_sigma_range = (0.025, 0.5)
  with pytest.raises(ValueError, match=r"strong_blur_sigma_range: \[0.1, 2.0\] in the workdir"):
    check_config(tiny_config, str(tmp_path))


def test_url_workdirs_are_kept_as_urls_and_local_ones_made_absolute(monkeypatch, tmp_path):
  assert str(workdir_path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
  monkeypatch.chdir(tmp_path)
  assert str(workdir_path("runs/a")) == str(tmp_path / "runs" / "a")


def test_the_config_is_saved_checked_and_read_back_through_a_url(fake_bucket, tiny_config):
  workdir = "gs://bucket/runs/a"
  workdir_path(workdir).mkdir(parents=True, exist_ok=True)
  check_config(tiny_config, workdir)
  save_config(tiny_config, workdir)
  assert json.loads((fake_bucket / "runs" / "a" / "config.json").read_text())["seed"] == 0
  loaded = load_config(workdir)
  assert loaded.data.eval_canvas == (32, 32) and loaded.model.decoder_widths == (8,) * 6
  assert load_config(workdir + "/config.json") == loaded
  tiny_config.seed = 3
  (workdir_path(workdir) / "checkpoints" / "2").mkdir(parents=True)
  with pytest.raises(ValueError, match="seed: 0 in the workdir, now 3"):
    check_config(tiny_config, workdir)
  with pytest.raises(FileNotFoundError, match="gs://bucket/runs/b/config.json does not exist"):
    load_config("gs://bucket/runs/b")


def test_leaving_the_with_block_stops_every_thread_orbax_started(tiny_config, tmp_path):
  # A thread left running to interpreter shutdown prints errors at exit (and once took
  # a pytest-xdist worker down with it).
  before = set(threading.enumerate())
  with Checkpointer(str(tmp_path)) as checkpointer:
    checkpointer.save(_host(_state(tiny_config, seed=1, step=1)))
    assert set(threading.enumerate()) - before, "an async save runs in threads"
  # An event loop's close() shuts its default executor down without waiting, so its idle
  # worker ("asyncio_0") may take a moment to exit on a loaded machine: allow it a few
  # seconds. A thread that was never told to stop would still be running after them.
  for thread in set(threading.enumerate()) - before:
    thread.join(timeout=5.0)
  assert not [thread.name for thread in set(threading.enumerate()) - before]
  with Checkpointer(str(tmp_path)) as reopened:
    assert reopened.latest_step() == 1, "the save finished before the threads stopped"


def test_a_run_is_not_resumed_on_a_folder_whose_content_changed(tiny_config, tmp_path):
  """Before: after the folder gained labels, the same command resumed the run on the new
  images under the old config without a word (a folder's prepared copy is named after
  its content, so the name tells the data apart)."""
  workdir = str(tmp_path)
  checkpoints.save_dataset_record("cowmix_folder/polyps_ff2ffe49e707/1.1.0", workdir)
  checkpoints.check_same_data("cowmix_folder/polyps_336a58db7efe/1.1.0", workdir)  # no run
  with Checkpointer(workdir) as checkpointer:
    checkpointer.save(_host(_state(tiny_config, seed=1, step=1)))
  checkpoints.check_same_data("cowmix_folder/polyps_ff2ffe49e707/1.1.0", workdir)
  with pytest.raises(checkpoints.ConfigError, match=(
      r"trained on the prepared dataset cowmix_folder/polyps_ff2ffe49e707/1.1.0, and the "
      r"data now prepares as cowmix_folder/polyps_336a58db7efe/1.1.0 .* new --workdir")):
    checkpoints.check_same_data("cowmix_folder/polyps_336a58db7efe/1.1.0", workdir)


def test_a_run_recorded_by_an_older_builder_version_resumes_with_a_warning(tiny_config,
                                                                           tmp_path,
                                                                           caplog):
  """Folder copies changed their naming in builder version 1.2.0 (by content only): a
  run recorded under 1.1.0 cannot be compared, and is not refused for it."""
  workdir = str(tmp_path)
  checkpoints.save_dataset_record("cowmix_folder/polyps_ff2ffe49e707/1.1.0", workdir)
  with Checkpointer(workdir) as checkpointer:
    checkpointer.save(_host(_state(tiny_config, seed=1, step=1)))
  with caplog.at_level("WARNING"):
    checkpoints.check_same_data("cowmix_folder/content_336a58db7efe/1.2.0", workdir)
  assert any("cannot be told; resuming" in r.getMessage() for r in caplog.records)
  with pytest.raises(checkpoints.ConfigError, match="changed since the run started"):
    checkpoints.check_same_data("cowmix_folder/polyps_336a58db7efe/1.1.0", workdir)
