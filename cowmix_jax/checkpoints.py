"""Checkpoints of the whole train state with orbax: the latest K and the best by mIoU.

``workdir/checkpoints/<step>`` holds the latest ``keep`` states (saved every
``checkpoint_every`` steps and at the end); ``workdir/best/<step>`` holds the state with
the best validation mIoU so far. Saves are asynchronous and atomic: orbax writes into a
temporary directory and renames it when complete, so a kill during a save leaves the
previous checkpoint as the latest usable one.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Union

import jax
import ml_collections
import orbax.checkpoint as ocp

from cowmix_jax.state import TrainState

LATEST, BEST = "checkpoints", "best"
# Config keys that may change between a run and its resumption.
RESUMABLE_KEYS = ("num_train_steps", "num_epochs", "log_every", "eval_every",
                  "eval_every_epochs", "checkpoint_every",
                  "keep_checkpoints", "eval_batch_size", "data.manual_dir", "data.data_dir")
CONFIG_FILE = "config.json"


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=True, **options))


class Checkpointer:
  """Saves and restores :class:`TrainState` in a workdir."""

  def __init__(self, workdir: str, keep: int = 2):
    self.workdir = os.path.abspath(workdir)
    self.latest = _manager(os.path.join(self.workdir, LATEST), max_to_keep=keep)
    self.best = _manager(os.path.join(self.workdir, BEST), max_to_keep=1,
                         best_fn=lambda metrics: metrics["miou"], best_mode="max")
    best_step = self.best.best_step()
    self.best_miou = (self.best.metrics(best_step)["miou"] if best_step is not None
                      else float("-inf"))

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save(self, state: TrainState) -> None:
    """Starts an asynchronous save of ``state`` at its step, once the previous save has
    finished (orbax would otherwise skip a save requested while one is in progress)."""
    self.latest.wait_until_finished()
    self.latest.save(int(state.step), args=ocp.args.StandardSave(state), force=True)

  def save_if_best(self, state: TrainState, miou: float) -> bool:
    if miou <= self.best_miou:
      return False
    self.best.wait_until_finished()
    self.best.save(int(state.step), args=ocp.args.StandardSave(state),
                   metrics={"miou": float(miou)}, force=True)
    self.best_miou = miou
    return True

  def best_record(self) -> dict:
    """``{"best_miou", "best_step"}`` of the best checkpoint (None, None without one)."""
    step = self.best.best_step()
    return {"best_miou": None if step is None else float(self.best.metrics(step)["miou"]),
            "best_step": step}

  def restore(self, template: TrainState, which: Union[str, int] = "latest"
              ) -> Optional[TrainState]:
    """The state saved at ``which`` (``latest``, ``best`` or a step), shaped and sharded
    like ``template``; None when there is no such checkpoint."""
    manager = self.best if which == "best" else self.latest
    if which in ("latest", "best"):
      step = manager.best_step() if which == "best" else manager.latest_step()
    else:
      step = int(which)
      if step not in manager.all_steps():
        raise ValueError(f"no checkpoint at step {step} in {manager.directory} (there are "
                         f"{sorted(manager.all_steps())})")
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def _plain(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def check_or_save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the config into ``workdir``, or, when one is there already (a restart),
  raises ValueError listing every setting that differs (except RESUMABLE_KEYS)."""
  path = os.path.join(workdir, CONFIG_FILE)
  current = _plain(config)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    old, new = _flatten(saved), _flatten(current)
    differences = [f"  {key}: {old.get(key, '(absent)')!r} in the workdir, now "
                   f"{new.get(key, '(absent)')!r}"
                   for key in sorted(set(old) | set(new))
                   if key not in RESUMABLE_KEYS and old.get(key) != new.get(key)]
    if differences:
      raise ValueError(
          f"{workdir} holds a run with a different config ({path}); use a new workdir, or "
          f"the same settings. Differences:\n" + "\n".join(differences))
  with open(path, "w") as f:
    json.dump(current, f, indent=2, sort_keys=True)
