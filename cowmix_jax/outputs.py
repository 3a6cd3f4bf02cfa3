"""Where the tools may write: never inside the data they read, never over a run's own
files, and never over an existing file unless the user asked (``--overwrite``).

Training, ``evaluate`` and ``predict`` check their output paths with these functions
before any work, so that a mistyped path costs an error message, not a dataset or a run.
URLs (``gs://...``) are not checked: only local paths can be compared reliably.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from absl import app

from cowmix_jax.cli import ConfigError

# What a run writes into its workdir (train.py, checkpoints.py, reporting.py,
# metrics_file.py, data/__init__.py): the files and folders no tool may write over.
RUN_FILES = ("config.json", "classes.json", "dataset.json", "results.json",
             "metrics.jsonl", "labelled_ids.json", "wall_seconds.json")
RUN_FOLDERS = ("checkpoints", "best", "corrupt_checkpoints")


def is_local(path: str) -> bool:
  return "://" not in str(path)


def is_inside(path: str, folder: str) -> bool:
  """Whether ``path`` is ``folder`` or lies inside it (links resolved)."""
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def overlaps(first: str, second: str) -> bool:
  """Whether one of two folders is the other or lies inside it."""
  return is_inside(first, second) or is_inside(second, first)


def is_run_file(path: str, workdir: str) -> bool:
  """Whether ``path`` is one of the files a run wrote into ``workdir`` (RUN_FILES, or
  anything in its checkpoint folders)."""
  if not (is_local(path) and is_local(workdir)):
    return False
  if os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(workdir):
    if os.path.basename(path) in RUN_FILES:
      return True
  return any(is_inside(path, os.path.join(workdir, folder)) for folder in RUN_FOLDERS)


def check_not_inside(path: str, flag: str, folders: Mapping[str, str | None]) -> None:
  """Refuses ``path`` when it is, or lies inside, one of ``folders``
  (``{what the folder is: its path}``; None entries are skipped).

  Raises:
    app.UsageError naming the flag, the path and the folder.
  """
  if not is_local(path):
    return
  for what, folder in folders.items():
    if folder and is_local(folder) and is_inside(path, folder):
      raise app.UsageError(
          f"{flag}={path} is {what} or inside it ({folder}): what it writes would replace "
          f"or mix with what is read from there; choose a path outside it")


def check_output_file(path: str, flag: str, workdir: str | None, overwrite: bool,
                      data_folders: Mapping[str, str | None] | None = None) -> None:
  """Refuses an output file that is a folder, lies in ``data_folders``, is one of the
  run's own files, or (without ``overwrite``) exists.

  Raises:
    app.UsageError naming the flag, the path and the fix.
  """
  if not path or not is_local(path):
    return
  if os.path.isdir(path):
    raise app.UsageError(f"{flag}={path} is a folder; give a file name")
  check_not_inside(path, flag, data_folders or {})
  if workdir and is_run_file(path, workdir):
    raise app.UsageError(
        f"{flag}={path} is one of the files the run in {workdir} keeps (its config, "
        f"classes, records or checkpoints); choose another file name")
  if os.path.exists(path) and not overwrite:
    raise app.UsageError(f"{flag}={path} exists; pass --overwrite to replace it, or "
                         f"choose another file name")


def check_output_folder(path: str, flag: str, workdir: str | None, overwrite: bool,
                        would_write: Iterable[str] | None = None,
                        data_folders: Mapping[str, str | None] | None = None) -> None:
  """Refuses an output folder that lies in ``data_folders`` or in the run's checkpoint
  folders, or (without ``overwrite``) one that already holds a file this would write
  (``would_write``: the file names; None: any file at all).

  Raises:
    app.UsageError naming the flag, the folder, a file and the fix.
  """
  if not path or not is_local(path):
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise app.UsageError(f"{flag}={path} is a file; give a folder")
  check_not_inside(path, flag, data_folders or {})
  if workdir and is_local(workdir):
    check_not_inside(path, flag, {f"the run's {folder}/ folder": os.path.join(workdir, folder)
                                  for folder in RUN_FOLDERS})
  if not os.path.isdir(path) or overwrite:
    return
  names = os.listdir(path) if would_write is None else [
      name for name in would_write if os.path.exists(os.path.join(path, name))]
  if names:
    what = "file(s)" if would_write is None else "of the files this would write"
    raise app.UsageError(
        f"{flag}={path} already holds {len(names)} {what} (e.g. {sorted(names)[0]}); pass "
        f"--overwrite to replace them, or choose another folder")


def check_workdir_apart_from_data(workdir: str, manual_dir: str | None) -> None:
  """Refuses a training workdir that is the dataset folder, lies inside it or holds it:
  the run's files (classes.json, config.json, ...) would replace the dataset's own, or
  the dataset's files would be read as the run's.

  Raises:
    cli.ConfigError naming both folders.
  """
  if not (manual_dir and is_local(workdir) and is_local(manual_dir)):
    return
  if overlaps(workdir, manual_dir):
    raise ConfigError(
        f"--workdir={workdir} and config.data.manual_dir={manual_dir} overlap (one is the "
        f"other or lies inside it): the run writes classes.json, config.json and its "
        f"checkpoints into the workdir, over or among the dataset's files. Choose a "
        f"workdir outside the dataset folder, e.g. --workdir=workdirs/"
        f"{os.path.basename(os.path.abspath(manual_dir)) or 'run'}")
