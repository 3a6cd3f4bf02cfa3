"""Tests of cowmix_jax/outputs.py: where the tools may write."""

import os

import pytest
from absl import app

from cowmix_jax import outputs
from cowmix_jax.cli import ConfigError


def _run(tmp_path):
  """A workdir holding what training writes, and a dataset folder."""
  workdir, data = tmp_path / "run", tmp_path / "data"
  (workdir / "checkpoints" / "4").mkdir(parents=True)
  for name in outputs.RUN_FILES:
    (workdir / name).write_text(name)
  (data / "train" / "labels").mkdir(parents=True)
  (data / "classes.json").write_text('["a", "b"]')
  (data / "train" / "labels" / "x.png").write_bytes(b"label")
  return str(workdir), str(data)


def _contents(folder):
  return {os.path.join(root, name): open(os.path.join(root, name), "rb").read()
          for root, _, names in os.walk(folder) for name in names}


def test_inside_and_overlap_by_hand(tmp_path):
  (tmp_path / "a" / "b").mkdir(parents=True)
  (tmp_path / "ab").mkdir()
  a, b, ab = str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(tmp_path / "ab")
  assert outputs.is_inside(b, a) and outputs.is_inside(a, a + os.sep)
  assert not outputs.is_inside(a, b) and not outputs.is_inside(ab, a)  # a prefix only
  assert outputs.overlaps(a, b) and outputs.overlaps(b, a) and not outputs.overlaps(a, ab)
  os.symlink(b, tmp_path / "link")
  assert outputs.is_inside(str(tmp_path / "link" / "f.json"), a)


@pytest.mark.parametrize("target, message", [
    ("data/classes.json", "is the dataset folder or inside it"),
    ("data/train/labels/x.png", "is the dataset folder or inside it"),
    ("run/config.json", "one of the files the run in"),
    ("run/results.json", "one of the files the run in"),
    ("run/checkpoints/4/x", "one of the files the run in"),
    ("run", "is a folder"),
])
def test_an_output_file_never_replaces_data_or_the_runs_files(tmp_path, target, message):
  workdir, data = _run(tmp_path)
  before = _contents(tmp_path)
  for overwrite in (False, True):  # --overwrite does not lift these
    with pytest.raises(app.UsageError, match=message):
      outputs.check_output_file(str(tmp_path / target), "--output", workdir, overwrite,
                                {"the dataset folder": data})
  assert _contents(tmp_path) == before


def test_an_existing_output_file_needs_overwrite(tmp_path):
  workdir, _ = _run(tmp_path)
  mine = tmp_path / "run" / "best.json"  # the README's evaluate output: in the workdir
  outputs.check_output_file(str(mine), "--output", workdir, overwrite=False)
  mine.write_text("{}")
  with pytest.raises(app.UsageError, match=r"--output=.*best.json exists; pass --overwrite"):
    outputs.check_output_file(str(mine), "--output", workdir, overwrite=False)
  outputs.check_output_file(str(mine), "--output", workdir, overwrite=True)
  outputs.check_output_file("gs://bucket/r.json", "--output", workdir, overwrite=False)


def test_an_output_folder_never_lies_in_data_or_checkpoints(tmp_path):
  workdir, data = _run(tmp_path)
  for target in ("data/train/labels", "data", "run/checkpoints/4"):
    with pytest.raises(app.UsageError, match="or inside it"):
      outputs.check_output_folder(str(tmp_path / target), "--predictions_dir", workdir, True,
                                  data_folders={"the dataset folder": data})
  with pytest.raises(app.UsageError, match="is a file; give a folder"):
    outputs.check_output_folder(str(tmp_path / "run" / "config.json"), "--predictions_dir",
                                workdir, True)


def test_an_output_folder_with_files_needs_overwrite(tmp_path):
  workdir, _ = _run(tmp_path)
  folder = tmp_path / "pred"
  outputs.check_output_folder(str(folder), "--predictions_dir", workdir, False)  # new
  folder.mkdir()
  outputs.check_output_folder(str(folder), "--predictions_dir", workdir, False)  # empty
  (folder / "other.txt").write_text("x")
  with pytest.raises(app.UsageError, match=r"already holds 1 file\(s\) \(e.g. other.txt\)"):
    outputs.check_output_folder(str(folder), "--predictions_dir", workdir, False)
  # With the names it would write, only those count.
  outputs.check_output_folder(str(folder), "--output_dir", workdir, False,
                              would_write=["a.png"])
  with pytest.raises(app.UsageError, match=r"already holds 1 of the files this would write"):
    outputs.check_output_folder(str(folder), "--output_dir", workdir, False,
                                would_write=["a.png", "other.txt"])
  outputs.check_output_folder(str(folder), "--predictions_dir", workdir, True)


@pytest.mark.parametrize("workdir", ["data", "data/runs/one", "."])
def test_a_workdir_overlapping_the_dataset_is_refused(tmp_path, workdir):
  data = tmp_path / "data"
  data.mkdir()
  with pytest.raises(ConfigError, match=r"--workdir=.* and config.data.manual_dir=.* overlap"):
    outputs.check_workdir_apart_from_data(str(tmp_path / workdir), str(data))
  outputs.check_workdir_apart_from_data(str(tmp_path / "runs" / "one"), str(data))
  outputs.check_workdir_apart_from_data(str(tmp_path / "data"), "")  # no folder dataset
