"""Checkpoints of the whole train state with orbax: the latest K and the best by mIoU.

``workdir/checkpoints/<step>`` holds the latest ``keep`` states (saved every
``checkpoint_every`` steps and at the end); ``workdir/best/<step>`` holds the state with
the best validation mIoU so far. Saves are asynchronous and atomic: orbax writes into a
temporary directory and renames it when complete, so a kill during a save leaves the
previous checkpoint as the latest usable one. A workdir may be a local path or a URL
that ``etils.epath`` and orbax serve (``gs://bucket/run``).
"""

from __future__ import annotations

import json
import logging as logging_lib
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from cowmix_jax import cli, config_base, method_keys
from cowmix_jax.cli import ConfigError
from cowmix_jax.state import TrainState

LATEST, BEST = "checkpoints", "best"
# Where latest checkpoints that fail to restore are moved (kept, never deleted).
CORRUPT = "corrupt_checkpoints"
DATASET_FILE = "dataset.json"  # the prepared dataset a run trains on
# Config keys that may change between a run and its resumption.
RESUMABLE_KEYS = ("num_epochs", "log_every", "eval_every",
                  "eval_every_epochs", "checkpoint_every",
                  "keep_checkpoints", "eval_batch_size", "data.manual_dir", "data.data_dir")
CONFIG_FILE = "config.json"
# The run's length: resumable only while the learning rate does not depend on it.
LENGTH_KEY = "num_train_steps"


def workdir_path(workdir: str | epath.Path) -> epath.Path:
  """``workdir`` as an ``epath.Path``: URLs (``gs://b/run``) as given, local paths made
  absolute (orbax needs absolute paths; ``os.path.abspath`` would mangle a URL)."""
  if "://" in str(workdir):
    return epath.Path(workdir)
  return epath.Path(os.path.abspath(os.path.expanduser(str(workdir))))


def _manager(directory: epath.Path, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=True, **options))


def readable_cause(error: Exception, limit: int = 300) -> str:
  """An error's message on one line, with the JSON specs that tensorstore prints for
  its stores (``TensorStore({...})``, hundreds of characters) shortened, at most
  ``limit`` characters."""
  cause = " ".join(str(error).split())
  cause = re.sub(r"TensorStore\(\{.*?\}\)", "TensorStore(...)", cause)
  return cause if len(cause) <= limit else cause[:limit - 3] + "..."


class CheckpointSaveError(OSError):
  """An asynchronous save failed (a full disk, a lost mount, ...): the run stops."""


def _involves_orbax(record: logging_lib.LogRecord) -> bool:
  """Whether a log record comes from orbax's code or carries a traceback through it."""
  marker = f"{os.sep}orbax{os.sep}"
  if marker in record.pathname:
    return True
  if record.name == "asyncio" and "orbax" in record.getMessage():
    return True  # a future orbax's writes left unretrieved (no traceback of its own)
  trace = record.exc_info[2] if record.exc_info else None
  while trace is not None:
    if marker in trace.tb_frame.f_code.co_filename:
      return True
    trace = trace.tb_next
  return False


class _QuietOrbax(logging_lib.Filter):
  """Drops orbax's error records (a traceback from each of its save threads, and
  asyncio's "exception was never retrieved" for each array it failed to write, which
  may come when its tasks are collected, after the checkpointer closed): a failed save
  is reported once, as a CheckpointSaveError, and a failed restore is raised. Drops its
  informational records too (some thirty lines per save and restore: thread pools,
  metadata stores, transfer rates). Its warnings stay. Installed by the first
  Checkpointer, for the rest of the process; ``COWMIX_JAX_VERBOSE=1`` keeps them all."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    noisy = record.levelno >= logging_lib.ERROR or record.levelno < logging_lib.WARNING
    return not (noisy and _involves_orbax(record))


_QUIET_ORBAX = _QuietOrbax()
# orbax logs through absl; asyncio reports the failed writes of its event loop.
_QUIETED_LOGGERS = ("absl", "asyncio")


class Checkpointer:
  """Saves and restores :class:`TrainState` in a workdir.

  A context manager: ``with Checkpointer(workdir) as checkpointer: ...`` waits for the
  pending saves and stops orbax's background threads on the way out, so none outlives
  its use (a thread left to interpreter shutdown prints errors at exit).
  """

  def __init__(self, workdir: str, keep: int = 2):
    self.workdir = workdir_path(workdir)
    self._failed = False
    self._unconfirmed: set[str] = set()  # saves started and not yet seen to succeed
    if not cli.wants_verbose(()):
      for name in _QUIETED_LOGGERS:
        logging_lib.getLogger(name).addFilter(_QUIET_ORBAX)
      cli.quiet_closed_event_loops()
    self.latest = _manager(self.workdir / LATEST, max_to_keep=keep)
    self.best = _manager(self.workdir / BEST, max_to_keep=1,
                         best_fn=lambda metrics: metrics["miou"], best_mode="max")
    best_step = self.best.best_step()
    self.best_miou = (self.best.metrics(best_step)["miou"] if best_step is not None
                      else float("-inf"))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, state: TrainState) -> None:
    """Starts an asynchronous save of ``state`` at its step, once the previous save has
    finished (orbax would otherwise skip a save requested while one is in progress).

    Raises:
      CheckpointSaveError if the previous save failed.
    """
    self._finish(self.latest)
    self.latest.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
    self._unconfirmed.add(LATEST)

  def save_if_best(self, state: TrainState, miou: float) -> bool:
    if miou <= self.best_miou:
      return False
    self._finish(self.best)
    self.best.save(int(state.step), args=ocp.args.StandardSave(state),
                   metrics={"miou": float(miou)}, force=True)
    self._unconfirmed.add(BEST)
    self.best_miou = miou
    return True

  def check_saves(self) -> None:
    """Raises CheckpointSaveError as soon as an asynchronous save has failed; a save
    still in progress is left alone (called after every step: it does not block)."""
    for name, manager in ((LATEST, self.latest), (BEST, self.best)):
      if name in self._unconfirmed and not manager.is_saving_in_progress():
        self._finish(manager)
        self._unconfirmed.discard(name)

  def _finish(self, manager: ocp.CheckpointManager) -> None:
    """Waits for ``manager``'s save in flight; its failure becomes one
    CheckpointSaveError naming the directory, the cause and the latest complete
    checkpoint of ``checkpoints/`` (the one a rerun resumes from, whichever of the two
    managers failed)."""
    try:
      manager.wait_until_finished()
    except Exception as error:  # orbax re-raises its threads' errors as they were
      self._failed = True
      cause = " ".join(str(error).split())
      kept = self.latest.latest_step()  # what a rerun resumes from (not best/'s)
      raise CheckpointSaveError(
          f"saving a checkpoint into {manager.directory} failed: {cause}. The run stops; "
          f"the latest complete checkpoint is "
          f"{'step ' + str(kept) if kept is not None else 'none'} (free space and run the "
          f"same command again to resume from it)") from None

  def best_record(self) -> dict:
    """``{"best_miou", "best_step"}`` of the best checkpoint (None, None without one)."""
    step = self.best.best_step()
    return {"best_miou": None if step is None else float(self.best.metrics(step)["miou"]),
            "best_step": step}

  @staticmethod
  def _resolve_step(manager: ocp.CheckpointManager, which: str | int) -> int | None:
    """The step ``which`` names (``latest``, ``best`` or a step); None when there is no
    checkpoint yet; ValueError naming the steps there are for a step that is not."""
    if which == "best":
      return manager.best_step()
    if which == "latest":
      return manager.latest_step()
    step = int(which)
    if step not in manager.all_steps():
      raise ValueError(f"no checkpoint at step {step} in {manager.directory} (there are "
                       f"{sorted(manager.all_steps())})")
    return step

  def restore(self, template: TrainState, which: str | int = "latest"
              ) -> TrainState | None:
    """The state saved at ``which`` (``latest``, ``best`` or a step), shaped and sharded
    like ``template``; None when there is no such checkpoint.

    For ``latest``, a checkpoint that fails to restore (a truncated file, a missing
    ``_METADATA``, ...) is reported in one line, moved aside to
    ``workdir/corrupt_checkpoints/<step>`` (never deleted) and the next newest one is
    tried, down to starting afresh."""
    manager = self.best if which == "best" else self.latest
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    set_aside = []
    while True:
      step = self._resolve_step(manager, which)
      if step is None:
        if set_aside:
          logging.warning("No checkpoint in %s restores (steps %s moved to %s): the run "
                          "starts again from the beginning.", self.workdir / LATEST,
                          ", ".join(map(str, set_aside)), self.workdir / CORRUPT)
        return None
      try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as error:  # orbax and tensorstore raise many kinds
        if which != "latest":
          raise
        self._set_aside(step, error)
        set_aside.append(step)

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves the unreadable latest checkpoint ``step`` out of the manager's directory
    and logs one line: the step, where it went and the cause."""
    source = self.workdir / LATEST / str(step)
    aside = self.workdir / CORRUPT / str(step)
    aside.parent.mkdir(parents=True, exist_ok=True)
    if aside.exists():
      aside = aside.parent / f"{step}-{len(list(aside.parent.iterdir()))}"
    source.rename(aside)
    logging.warning("The checkpoint at step %d does not restore (%s: %s); moved to %s, "
                    "trying the one before.", step, type(error).__name__,
                    readable_cause(error), aside)
    self.latest.reload()

  def restore_entries(self, names: Sequence[str], sharding: jax.sharding.Sharding,
                      which: str | int = "latest") -> tuple[dict[str, Any], int]:
    """Some fields of the train state saved at ``which`` (e.g. ``teacher_params``,
    ``teacher_batch_stats``), as arrays placed with ``sharding``, and the step.

    Shapes come from the checkpoint's own metadata: neither the model's initialisation
    nor the optimiser (nor the pretrained file it was built from) is needed.
    """
    manager = self.best if which == "best" else self.latest
    step = self._resolve_step(manager, which)
    if step is None:
      raise FileNotFoundError(f"no {which} checkpoint in {manager.directory}")
    unknown = [name for name in names if name not in TrainState.__dataclass_fields__]
    if unknown:
      raise KeyError(f"{unknown}: not fields of the train state")
    with ocp.CheckpointManager(manager.directory,
                               item_handlers=ocp.PyTreeCheckpointHandler()) as reader:
      metadata = reader.item_metadata(step)
      # An empty collection (a model without BatchNorm) is not in the metadata.
      abstract = {name: jax.tree.map(
          lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
          dict(metadata[name])) for name in names if metadata.get(name)}
      restored = reader.restore(step, args=ocp.args.PyTreeRestore(
          abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True))
    return {name: restored.get(name, {}) for name in names}, step

  def wait(self) -> None:
    """Waits for the saves in flight; CheckpointSaveError if one failed."""
    self._finish(self.latest)
    self._finish(self.best)

  def close(self) -> None:
    """Waits for the pending saves and releases orbax's threads (after a failed save,
    without raising it again)."""
    for manager in (self.latest, self.best):
      try:
        manager.close()
      except Exception:
        if not self._failed:
          raise

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def _plain(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _read_by_run(key: str, saved: dict[str, Any]) -> bool:
  """Whether the run of the flattened config ``saved`` reads ``key``
  (``method_keys``; a setting its method never reads cannot change it)."""
  return method_keys.reads_key(key, saved.get("method", ""), saved.get("mask.mix", "box"),
                               bool(saved.get("mask.complementary", False)))


def _resumable(key: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
  """Whether ``key`` may change when the run of flattened config ``old`` is resumed
  with ``new``: RESUMABLE_KEYS, the length only under a constant learning rate (a
  cosine or poly rate decays over the length, so a new length changes the rate of the
  steps already planned)."""
  if key == LENGTH_KEY:
    return old.get("lr_schedule") == new.get("lr_schedule") == "constant"
  return key in RESUMABLE_KEYS


def config_differences(config: ml_collections.ConfigDict, workdir: str) -> list:
  """Lines ``key: saved value in the workdir, now value`` for every setting that differs
  from the run already in ``workdir`` (none when there is no run yet: no config.json,
  or no checkpoint to resume, as after a run stopped by a bad setting), except the
  resumable ones (``_resumable``) and settings the run's method does not read
  (``method_keys``; the method itself is read by all). A key added to the defaults
  after the run was saved counts as its default there (``load_config``)."""
  if not (workdir_path(workdir) / CONFIG_FILE).exists() or not has_checkpoint(workdir):
    return []
  old, new = _flatten(_plain(load_config(workdir))), _flatten(_plain(config))
  return [f"  {key}: {old.get(key, '(absent)')!r} in the workdir, now "
          f"{new.get(key, '(absent)')!r}"
          + (f" (lr_schedule={old.get('lr_schedule')!r} decays over the run's length)"
             if key == LENGTH_KEY else "")
          for key in sorted(set(old) | set(new))
          if not _resumable(key, old, new) and old.get(key) != new.get(key)
          and (_read_by_run(key, old) or _read_by_run(key, new))]


def has_checkpoint(workdir: str) -> bool:
  """Whether ``workdir/checkpoints`` holds a saved step (a run to resume)."""
  directory = workdir_path(workdir) / LATEST
  return directory.exists() and any(child.name.isdigit() for child in directory.iterdir())


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError listing every difference from the run in ``workdir`` (a restart
  with settings that would not continue the same run). Every process of a multi-host run
  calls it, before any of them writes, so that all stop together."""
  differences = config_differences(config, workdir)
  if differences:
    raise ConfigError(
        f"{workdir} holds a run with a different config "
        f"({workdir_path(workdir) / CONFIG_FILE}); use a new workdir, or the same settings. "
        f"Differences:\n" + "\n".join(differences))


def check_same_data(prepared: str, workdir: str) -> None:
  """Raises ConfigError when the run in ``workdir`` (one with a checkpoint) trained on
  another prepared copy of its dataset than ``prepared`` (tfds' ``info.full_name``). A
  folder's copy is named after its content, so this is a folder edited since the run
  started: resuming would go on with other images under the same config."""
  path = workdir_path(workdir) / DATASET_FILE
  if not path.exists() or not has_checkpoint(workdir):
    return
  before = json.loads(path.read_text())["prepared"]
  if before != prepared and _versions_differ(before, prepared):
    logging.warning(
        "%s holds a run trained on %s, prepared by another version of the dataset's "
        "builder than today's %s: the two copies are named differently, so whether the "
        "data changed cannot be told; resuming.", workdir, before, prepared)
    return
  if before != prepared:
    raise ConfigError(
        f"{workdir} holds a run trained on the prepared dataset {before}, and the data now "
        f"prepares as {prepared} (its files or classes changed since the run started): "
        f"train the new data in a new --workdir, or put the old files back to resume")


def _versions_differ(first: str, second: str) -> bool:
  """Whether two prepared names (``dataset/config/version``) are of the same dataset in
  different builder versions (folder copies changed their naming in 1.2.0)."""
  first_parts, second_parts = first.split("/"), second.split("/")
  return (len(first_parts) == len(second_parts) == 3 and first_parts[0] == second_parts[0]
          and first_parts[2] != second_parts[2])


def save_dataset_record(prepared: str, workdir: str) -> None:
  """Writes ``workdir/dataset.json``: the prepared copy the run trains on."""
  (workdir_path(workdir) / DATASET_FILE).write_text(json.dumps({"prepared": prepared}))


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``workdir/config.json`` (:func:`load_config` reads it back)."""
  (workdir_path(workdir) / CONFIG_FILE).write_text(
      json.dumps(_plain(config), indent=2, sort_keys=True))


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the config files write (overrides parse as tuples)."""
  if isinstance(value, dict):
    return {key: _tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(item) for item in value)
  return value


def load_config(run: str) -> ml_collections.ConfigDict:
  """The config a run saved: ``run`` is its workdir or the path of its config.json."""
  path = epath.Path(run) if str(run).endswith(".json") else workdir_path(run) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: expected the workdir of a training run "
                            f"(it saves {CONFIG_FILE}) or the path of that file")
  try:
    saved = json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise ValueError(f"{path}: not valid JSON ({error})") from None
  return config_base.with_defaults(_tuples(saved))

