"""The training loop: data -> jitted step -> progress -> final teacher evaluation."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.experimental import multihost_utils

from cowmix_jax import data as data_lib
from cowmix_jax import method_keys, metrics, models, outputs, reporting, sharding, steps
from cowmix_jax.checkpoints import (
  Checkpointer,
  check_config,
  check_same_data,
  save_config,
  save_dataset_record,
  workdir_path,
)
from cowmix_jax.config_checks import (
  check_against_data,
  mesh_size,
  numbers_given_to_auto_fields,
  resolve_batches,
  resolve_training_length,
  validate_config,
)
from cowmix_jax.evaluator import Evaluator
from cowmix_jax.models import convert, summary
from cowmix_jax.models import pretrained as pretrained_lib
from cowmix_jax.optimizers import learning_rate_at, make_optimizer
from cowmix_jax.state import TrainState, create_train_state, init_variables


def pretrained_file(model_config: ml_collections.ConfigDict) -> str | None:
  """The converted weight file ``config.model.pretrained`` names (named weights are
  downloaded or converted into the cache first), or None for random initialisation.

  Raises:
    FileNotFoundError naming the file and how to make it.
  """
  name = model_config.pretrained
  if name in ("", pretrained_lib.NO_WEIGHTS):
    return None
  path = pretrained_lib.resolve(name)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"config.model.pretrained={path!r} does not exist (convert a PyTorch file with "
        f"python -m cowmix_jax.models.convert, or name weights: "
        f"{sorted(pretrained_lib.PACKAGED) + sorted(pretrained_lib.DOWNLOADABLE)})")
  return path


def initial_variables_and_optimizer(config: ml_collections.ConfigDict, model, image_shape):
  """The initial variables (random, with ``config.model.pretrained`` merged in when
  given) and the optimiser (per-group learning rates when pretrained)."""
  variables = init_variables(model, jax.random.PRNGKey(config.seed), image_shape)
  path = pretrained_file(config.model)
  if path is None:
    return variables, make_optimizer(config)
  pretrained = convert.load(path)
  variables = convert.merge_pretrained(jax.tree.map(np.asarray, dict(variables)), pretrained,
                                       source=path)
  loaded = flatten_dict(pretrained.get("params", {}))
  labels = unflatten_dict({key: "pretrained" if key in loaded else "new"
                           for key in flatten_dict(variables["params"])})
  logging.info("%s", describe_pretrained_load(variables, pretrained, path, config))
  return variables, make_optimizer(config, labels)


def describe_pretrained_load(variables: dict, pretrained: dict, path: str,
                             config: ml_collections.ConfigDict) -> str:
  """How many arrays came from ``path``, and which encoder arrays it did not have (they
  keep their random init: a sign of a file for another encoder)."""
  loaded = {c: flatten_dict(pretrained.get(c, {})) for c in ("params", "batch_stats")}
  text = (f"Loaded {len(loaded['params'])} parameter and {len(loaded['batch_stats'])} "
          f"BatchNorm statistic arrays from {path} (lr x"
          f"{config.model.pretrained_lr_multiplier:g}); "
          f"{len(flatten_dict(variables['params'])) - len(loaded['params'])} parameter "
          f"arrays are new.")
  not_loaded = ["/".join(key) for collection in ("params", "batch_stats")
                for key in flatten_dict(variables.get(collection, {}))
                if key[0] == "encoder" and key not in loaded[collection]]
  if not_loaded:
    text += (f" {len(not_loaded)} encoder array(s) were not in the file and keep their "
             f"random init: {not_loaded[:10]}")
  return text


def teacher_variables(state: TrainState) -> dict:
  return {"params": state.teacher_params, "batch_stats": state.teacher_batch_stats}


def student_variables(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def _format_metrics(values: dict[str, float]) -> str:
  return " ".join(f"{name}={value:.4f}" for name, value in values.items())


class PreemptionWatch:
  """When to stop for a preemption notice (SIGTERM): the loop then checkpoints and exits.

  One process: a SIGTERM handler sets a flag that the loop reads after each step.
  Several processes (``jax.distributed``): JAX's preemption sync service catches SIGTERM
  on any process and gives every process the same step to stop at, whichever processes
  got the signal and when, so all of them enter the collective checkpoint save together.
  """

  def __init__(self):
    self.coordinated = jax.process_count() > 1
    self._signalled = False
    if not self.coordinated and threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self._signalled = True

  def should_stop(self, step: int) -> bool:
    """Called once after every step, with the same steps on every process."""
    if not self.coordinated:
      return self._signalled
    if multihost_utils.reached_preemption_sync_point(step):
      logging.warning("Preemption notice (SIGTERM) on some process: every process saves "
                      "a checkpoint at step %d and stops.", step)
      return True
    return False


def barrier(name: str) -> None:
  """Waits until every process gets here (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def fetch_finite_metrics(step_metrics, step: int, checkpointer: Checkpointer) -> dict[str, float]:
  """Host copies of a step's metrics; FloatingPointError naming the step and the loss
  terms if any is not finite (no checkpoint is written from such a state)."""
  values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
  if not all(np.isfinite(v) for v in values.values()):
    checkpointer.wait()
    kept = checkpointer.latest_step()
    raise FloatingPointError(
        f"non-finite loss at step {step}: {_format_metrics(values)}. Nothing was saved from "
        f"this state; the last good checkpoint is "
        f"{'step ' + str(kept) if kept is not None else 'none (no checkpoint yet)'}.")
  return values


def _restore_or_init(config, model, tx, mesh, checkpointer: Checkpointer, image_shape,
                     variables):
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), image_shape,
                             variables)
  state = jax.device_put(state, sharding.replicated(mesh))
  restored = checkpointer.restore(state)
  if restored is None:
    return state
  logging.info("Resuming from the checkpoint at step %d in %s.", int(restored.step),
               checkpointer.workdir)
  return restored


def parameter_checksum(params) -> float:
  """Sum of |w| over this process's copy of the (replicated) parameters: equal on every
  process of a healthy multi-host run."""
  return float(sum(np.abs(np.asarray(leaf.addressable_data(0), np.float64)).sum()
                   for leaf in jax.tree.leaves(params)))


def checksums_of_every_process(params) -> dict[str, float]:
  """``{"parameter_checksum_process<i>": checksum}`` for every process (gathered; float32
  when the gather goes through JAX without x64)."""
  local = np.array([parameter_checksum(params)], np.float32)
  gathered = np.asarray(multihost_utils.process_allgather(local)).reshape(-1)
  return {f"parameter_checksum_process{i}": float(v) for i, v in enumerate(gathered)}


# Progress lines: after the first step (with its compile time), then at least this
# often, besides every config.log_every steps.
PROGRESS_SECONDS = 30.0


class ProgressClock:
  """When to print a progress line and what it says: the step, the share done, the
  rate of the steps since the first one (which includes the compilation) and the time
  left at that rate."""

  def __init__(self, start_step: int, num_train_steps: int, clock=time.monotonic):
    self.start_step, self.num_train_steps, self._clock = start_step, num_train_steps, clock
    self.started = clock()
    self.first_done: tuple[int, float] | None = None
    self.last_line = self.started

  def line_due(self) -> bool:
    """True for the first step of this run and once PROGRESS_SECONDS have passed since
    the last line."""
    return self.first_done is None or self._clock() - self.last_line >= PROGRESS_SECONDS

  def line(self, step: int) -> str:
    """The progress line of a finished ``step`` (call once its metrics are fetched)."""
    now = self.last_line = self._clock()
    done = f"step {step}/{self.num_train_steps} ({100 * step / self.num_train_steps:.0f}%)"
    if self.first_done is None:
      self.first_done = (step, now)
      return f"{done}  first step (compilation included) took {now - self.started:.1f} s"
    first_step, first_time = self.first_done
    if step == first_step or now <= first_time:
      return done
    rate = (step - first_step) / (now - first_time)
    left = (self.num_train_steps - step) / rate
    return f"{done}  {rate:.2f} steps/s  ETA {format_duration(left)}"


def format_duration(seconds: float) -> str:
  """``42 s``, ``7 min``, ``2 h 05 min``."""
  if seconds < 90:
    return f"{seconds:.0f} s"
  minutes = round(seconds / 60)
  return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def _due(step: int, every: int) -> bool:
  return bool(every) and step % every == 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """Trains ``config.method`` for ``config.num_train_steps`` and evaluates the teacher.

  Resumes from the latest checkpoint in ``workdir`` if there is one (the same command
  continues an interrupted run exactly). Saves checkpoints every
  ``config.checkpoint_every`` steps, at the end and on SIGTERM; writes ``config.json``,
  ``results.json`` (final teacher mIoU and per-class IoU) and the labelled ids.

  Returns:
    the results dictionary, or None when stopped by SIGTERM.
  """
  # One start-up pass, before anything is written (the workdir included): every setting,
  # the dataset, the labelled subset and the run already in the workdir.
  numbers_given_to_auto_fields(config)
  outputs.check_workdir_apart_from_data(workdir, config.data.manual_dir)
  resolve_batches(config, jax.default_backend())
  validate_config(config, jax.device_count(), jax.process_count())
  num_devices = mesh_size(config, jax.device_count(), jax.process_count())
  mesh = sharding.make_mesh(num_devices)
  # The model needs the class count and an epoch the training split's size, known once
  # the dataset is prepared; the inputs need the start step, known once the state is
  # restored.
  probe = data_lib.builders.prepare(config.data)
  check_against_data(config, probe)
  resolve_training_length(config, probe.info.splits[config.data.train_split].num_examples)
  pretrained_file(config.model)  # downloaded or converted now, or a one-line error
  check_config(config, workdir)  # every process, so that all of them stop on a mismatch
  check_same_data(probe.info.full_name, workdir)
  barrier("config checked")  # before process 0 replaces the file the others read
  if jax.process_index() == 0:
    workdir_path(workdir).mkdir(parents=True, exist_ok=True)
    save_config(config, workdir)
    save_dataset_record(probe.info.full_name, workdir)
    reporting.write_classes(workdir, probe.info.metadata["class_names"],
                            probe.info.metadata.get("class_colours"))
  barrier("workdir created")
  # Every exit path, an exception included, closes the writers and then the
  # checkpointer (which lets an async save in flight finish): the error is then the
  # last thing printed, and the last checkpoint is whole.
  with contextlib.ExitStack() as cleanup:
    checkpointer = cleanup.enter_context(Checkpointer(workdir, config.keep_checkpoints))
    return _train(config, workdir, checkpointer, cleanup, num_devices, mesh, probe)


def _train(config, workdir, checkpointer, cleanup, num_devices, mesh, probe):
  """The body of train_and_evaluate once the checkpointer exists."""
  preemption = PreemptionWatch()
  num_classes = len(probe.info.metadata["class_names"])
  model = models.build_model(config.model, num_classes)
  image_shape = (1,) + tuple(config.data.augment.crop_size) + (3,)
  variables, tx = initial_variables_and_optimizer(config, model, image_shape)
  if jax.process_index() == 0:
    logging.info("Model %s, parameters and cost:\n%s", config.model.name,
                 summary.report(model, variables, image_shape))
  state = _restore_or_init(config, model, tx, mesh, checkpointer, image_shape, variables)
  start_step = int(state.step)
  inputs = data_lib.make_inputs(config, workdir, jax.process_index(), jax.process_count(),
                                start_step=start_step)
  eval_split = config.data.eval_split
  logging.info("Method %s on %d device(s); %d labelled images, unlabelled from %s, %d %s "
               "images.", config.method, num_devices, len(inputs.labelled_ids),
               "+".join(inputs.unlabelled_splits), inputs.num_examples(eval_split), eval_split)
  train_step = steps.make_train_step(model, tx, config, mesh)
  visualise = steps.make_visualise_fn(model, config, mesh)
  eval_batch_size = config.eval_batch_size // jax.process_count()
  writer = reporting.make_writer(workdir)
  cleanup.callback(writer.close)
  palette = reporting.palette_of(probe.info.metadata, num_classes)
  normalisation = models.input_normalisation(config.model)

  scorer = Evaluator(model, mesh, inputs.num_classes,
                     lambda: inputs.eval_batches(eval_split, eval_batch_size))

  def evaluate_and_report(step):
    teacher, student = scorer.confusion(teacher_variables(state)), scorer.confusion(
        student_variables(state))
    mious = {"teacher_miou": metrics.mean_iou(teacher), "student_miou": metrics.mean_iou(student)}
    writer.write_scalars(step, mious)
    logging.info("step %d  %s mIoU: teacher %.2f, student %.2f", step, eval_split,
                 100 * mious["teacher_miou"], 100 * mious["student_miou"])
    return teacher, mious

  start = time.time()
  progress = reporting.ReportProgress(num_train_steps=config.num_train_steps,
                                      every_steps=config.log_every or None, writer=writer,
                                      start_step=start_step)
  saved_step = start_step
  clock = ProgressClock(start_step, config.num_train_steps)
  batches = sharding.prefetch_to_mesh(inputs.train, mesh, config.prefetch_batches)
  in_flight = None  # the previous step's metrics, until that step has finished
  for step in range(start_step + 1, config.num_train_steps + 1):
    host_batch, batch = next(batches)
    if _due(step, config.image_every):  # before the step: the same masks as the step
      visuals = jax.tree.map(np.asarray, visualise(state, batch))
      writer.write_images(step, reporting.visual_summaries(visuals, host_batch, palette,
                                                           normalisation))
    state, step_metrics = train_step(state, batch)
    if in_flight is not None:
      # The host runs one step ahead of the devices, no more: otherwise it dispatches up
      # to the next logged step at once, and a progress line or a SIGTERM waits for all
      # of them (minutes when steps are slow). The next step is queued, so the devices
      # do not idle.
      jax.block_until_ready(in_flight)
    in_flight = step_metrics
    checkpointer.check_saves()  # a failed asynchronous save stops the run at once
    logged = _due(step, config.log_every) or step == config.num_train_steps
    if logged or clock.line_due():
      # Fetched first: the wait lets the rate count finished steps, not dispatched ones.
      values = fetch_finite_metrics(step_metrics, step, checkpointer)
      logging.info("%s  %s", clock.line(step), _format_metrics(values))
    if progress(step):  # at the logged steps
      writer.write_scalars(step, {**values, "learning_rate": learning_rate_at(config, step)})
    if _due(step, config.eval_every) and step != config.num_train_steps:
      _, mious = evaluate_and_report(step)
      if checkpointer.save_if_best(state, mious["teacher_miou"]):
        logging.info("step %d  best mIoU so far: saved to %s/best", step, workdir)
    stop = preemption.should_stop(step)  # read once: the signal may come at any moment
    if _due(step, config.checkpoint_every) or stop:
      fetch_finite_metrics(step_metrics, step, checkpointer)
      checkpointer.save(state)
      saved_step = step
      logging.info("step %d  checkpoint saving (async) to %s/checkpoints", step, workdir)
    if stop:
      checkpointer.wait()
      logging.warning("Stopped at step %d by SIGTERM; rerun the same command to resume.",
                      step)
      return None

  if saved_step != int(state.step):
    fetch_finite_metrics(step_metrics, int(state.step), checkpointer)
    checkpointer.save(state)
  train_seconds = time.time() - start
  writer.write_scalars(int(state.step), checksums_of_every_process(state.params))
  confusion, mious = evaluate_and_report(int(state.step))
  iou = metrics.per_class_iou(confusion)
  checkpointer.save_if_best(state, mious["teacher_miou"])
  checkpointer.wait()
  results = {
      "miou": metrics.mean_iou(confusion),
      "student_miou": mious["student_miou"],
      "per_class_iou": {name: float(v) for name, v in zip(inputs.class_names, iou)},
      "step": int(state.step),
      "split": eval_split,
      "dataset": config.data.name,
      "num_labelled": len(inputs.labelled_ids),
      "method": config.method,
      "model": "teacher",
      "train_seconds": train_seconds,
      # The best teacher of the periodic evaluations and the final one (DIR/best).
      **checkpointer.best_record(),
  }
  if jax.process_index() == 0:
    (workdir_path(workdir) / "results.json").write_text(json.dumps(results, indent=2))
  logging.info("Teacher per-class IoU (%%) on %s:\n%s", eval_split,
               metrics.format_iou_table(confusion, inputs.class_names))
  print(f"Final teacher {eval_split} mIoU: {100 * results['miou']:.2f}% "
        f"({method_keys.describe(config.method, config.mask.mix, config.mask.complementary)}, "
        f"step {results['step']}, {train_seconds:.0f}s of training)")
  return results
