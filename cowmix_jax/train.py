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
import optax
from absl import logging
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.experimental import multihost_utils

from cowmix_jax import data as data_lib
from cowmix_jax import losses, metrics, mixing, models, reporting, sharding, steps
from cowmix_jax.checkpoints import Checkpointer, check_config, save_config, workdir_path
from cowmix_jax.evaluator import Evaluator
from cowmix_jax.models import convert, summary
from cowmix_jax.models import pretrained as pretrained_lib
from cowmix_jax.registry import Registry
from cowmix_jax.state import TrainState, create_train_state, init_variables

BATCH_KEYS = ("batch_size", "unlabelled_batch_size", "eval_batch_size")


def shareable_batches(config: ml_collections.ConfigDict, devices: int) -> dict[str, int]:
  """The smallest batches ``devices`` devices can share: the labelled and unlabelled
  batches grown by one common factor (keeping their ratio, e.g. the paper's 1 + 2), the
  evaluation batch rounded up to a multiple of ``devices``."""
  labelled, unlabelled = max(1, config.batch_size), max(1, config.unlabelled_batch_size)
  factor = next(k for k in range(1, devices + 1)
                if labelled * k % devices == 0 and unlabelled * k % devices == 0)
  return {"batch_size": labelled * factor, "unlabelled_batch_size": unlabelled * factor,
          "eval_batch_size": -(-max(1, config.eval_batch_size) // devices) * devices}


def mesh_size(config: ml_collections.ConfigDict, device_count: int, process_count: int) -> int:
  """The number of devices in the ``('data',)`` mesh: ``config.num_devices``, or all of
  them when it is <= 0; ValueError, with the exact overrides that would work, when the
  global batches cannot be shared by them or a multi-process run would leave devices out.
  """
  asked = config.num_devices if config.num_devices > 0 else device_count
  problems = []
  if asked > device_count:
    problems.append(f"config.num_devices={config.num_devices} but {device_count} devices "
                    f"are visible")
  if process_count > 1 and asked != device_count:
    problems.append(f"config.num_devices={config.num_devices}: a run of {process_count} "
                    f"processes must use all {device_count} devices (every process feeds "
                    f"its own)")
  devices = device_count if problems else asked
  for key in BATCH_KEYS:
    if config[key] <= 0 or config[key] % devices:
      problems.append(f"config.{key}={config[key]} is not a positive multiple of the "
                      f"{devices} devices (one device cannot hold part of an image)")
  if problems:
    fixes = ([f"--config.num_devices={-1 if devices == device_count else devices}"]
             if devices != asked else [])
    fixes += [f"--config.{key}={value}" for key, value in
              shareable_batches(config, devices).items() if value != config[key]]
    raise ValueError("; ".join(problems) + ". Use: " + " ".join(fixes) + " (batches are "
                     "global: a larger batch changes the optimisation, so reconsider the "
                     "learning rate and num_train_steps).")
  return asked


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the config key when a setting cannot work."""
  mixing.make_perturbation(config)
  losses.CONSISTENCY_LOSSES.get(config.consistency_loss)
  losses.CONFIDENCE_MODES.get(config.confidence.mode)
  if not 0.0 <= config.teacher_alpha <= 1.0:
    raise ValueError(f"config.teacher_alpha={config.teacher_alpha} must be in [0, 1]")


def check_cow_sigma(config: ml_collections.ConfigDict) -> None:
  """Cow masks (cowmix, cowout) whose largest sigma exceeds the crop's shorter side
  would be almost uniform: the perturbation would vanish without a word."""
  if mixing.make_perturbation(config).mask_kind != "cow":
    return
  sigma = max(data_lib.pair_setting(config.mask.cow_sigma_range, "mask.cow_sigma_range",
                                    "(smallest, largest) sigma in pixels", float))
  crop = tuple(config.data.augment.crop_size)
  if sigma > min(crop):
    scale = min(crop) / 360  # the paper's CamVid: sigma 4..16 for 480x360 images
    suggestion = (round(4 * scale, 2), round(16 * scale, 2))
    raise ValueError(
        f"config.mask.cow_sigma_range={tuple(config.mask.cow_sigma_range)}: sigma {sigma:g} "
        f"is larger than the crop's shorter side (config.data.augment.crop_size={crop}, "
        f"pixels after config.data.downscale), so cow masks would be nearly uniform. The "
        f"paper uses 4..16 for 480x360 images; for this crop, e.g. "
        f"--config.mask.cow_sigma_range='{suggestion}'.")


def check_against_data(config: ml_collections.ConfigDict, builder) -> None:
  """The settings that depend on the prepared dataset, checked before any work: the
  splits exist, the evaluation canvas holds every evaluation image, the labelled subset
  fits the training split, cow masks are not wider than the crops (``auto`` canvas,
  crop and sigmas resolved here)."""
  present = sorted(builder.info.splits)
  for key in ("train_split", "eval_split"):
    if config.data[key] not in builder.info.splits:
      raise ValueError(f"config.data.{key}={config.data[key]!r}: the dataset "
                       f"{config.data.name!r} has the splits {present}")
  data_lib.resolve_data_settings(config, builder)
  check_cow_sigma(config)
  data_lib.splits.check_num_labelled(
      config.data.num_labelled, builder.info.splits[config.data.train_split].num_examples)


# ``(peak learning rate, num_train_steps) -> a float or an optax schedule``.
LR_SCHEDULES = Registry("config.lr_schedule", "learning-rate schedules")


@LR_SCHEDULES.register("constant")
def _constant(peak: float, num_train_steps: int):
  return peak


@LR_SCHEDULES.register("cosine")
def _cosine(peak: float, num_train_steps: int):
  return optax.cosine_decay_schedule(peak, num_train_steps)


def learning_rate_schedule(config: ml_collections.ConfigDict, scale: float = 1.0):
  """``scale * config.learning_rate``: constant (the paper), or with ``cosine`` decayed
  to 0 over ``config.num_train_steps`` (an optax schedule of the step count)."""
  return LR_SCHEDULES.get(config.get("lr_schedule", "constant"))(
      config.learning_rate * scale, config.num_train_steps)


def learning_rate_at(config: ml_collections.ConfigDict, step: int) -> float:
  schedule = learning_rate_schedule(config)
  return float(schedule(step) if callable(schedule) else schedule)


def make_optimizer(config: ml_collections.ConfigDict,
                   pretrained_labels=None) -> optax.GradientTransformation:
  """Adam at ``config.learning_rate`` (paper, appendix D.3), following
  ``config.lr_schedule``. With ``pretrained_labels`` (a tree like the params of
  ``pretrained`` / ``new`` strings), pretrained parameters get
  ``config.model.pretrained_lr_multiplier`` times the rate (0.1 in the authors' code),
  via ``optax.multi_transform``."""
  if pretrained_labels is None:
    return optax.adam(learning_rate_schedule(config))
  multiplier = config.model.get("pretrained_lr_multiplier", 0.1)
  return optax.multi_transform(
      {"pretrained": optax.adam(learning_rate_schedule(config, multiplier)),
       "new": optax.adam(learning_rate_schedule(config))}, pretrained_labels)


def initial_variables_and_optimizer(config: ml_collections.ConfigDict, model, image_shape):
  """The initial variables (random, with ``config.model.pretrained`` merged in when
  given) and the optimiser (per-group learning rates when pretrained)."""
  variables = init_variables(model, jax.random.PRNGKey(config.seed), image_shape)
  name = config.model.get("pretrained", "")
  if not name:
    return variables, make_optimizer(config)
  path = pretrained_lib.resolve(name)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"config.model.pretrained={path!r} does not exist (convert a PyTorch file with "
        f"python -m cowmix_jax.models.convert, or name packaged weights: "
        f"{sorted(pretrained_lib.PACKAGED)})")
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
          f"{config.model.get('pretrained_lr_multiplier', 0.1):g}); "
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


def resolve_training_length(config: ml_collections.ConfigDict, num_train_examples: int) -> None:
  """Sets ``config.num_train_steps`` (and ``config.eval_every``) from
  ``config.num_epochs`` (and ``config.eval_every_epochs``) when those are positive.

  An epoch is one pass over the ``num_train_examples`` images of the training split at
  ``config.batch_size`` labelled images per step, as in the paper (CamVid: 367 steps at
  batch 1, so 300 epochs are 110,100 steps), whatever the number of labelled images.
  Lengths round to the nearest step (at least 1).
  """
  steps_per_epoch = num_train_examples / config.batch_size
  epochs = config.get("num_epochs", 0)
  if epochs < 0:
    raise ValueError(f"config.num_epochs={epochs} must be >= 0 (0: use num_train_steps)")
  if epochs > 0:
    config.num_train_steps = max(1, int(round(epochs * steps_per_epoch)))
  eval_epochs = config.get("eval_every_epochs", 0)
  if eval_epochs > 0:
    config.eval_every = max(1, int(round(eval_epochs * steps_per_epoch)))
  if epochs > 0 or eval_epochs > 0:
    logging.info("%s epochs of %d images at batch %d: %d steps, evaluating every %s steps.",
                 f"{epochs:g}" if epochs else "-", num_train_examples, config.batch_size,
                 config.num_train_steps, config.eval_every or "(end only)")


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
  workdir_path(workdir).mkdir(parents=True, exist_ok=True)
  num_devices = mesh_size(config, jax.device_count(), jax.process_count())
  validate_config(config)
  mesh = sharding.make_mesh(num_devices)
  # The model needs the class count and an epoch the training split's size, known once
  # the dataset is prepared; the inputs need the start step, known once the state is
  # restored.
  probe = data_lib.builders.prepare(config.data)
  check_against_data(config, probe)
  resolve_training_length(config, probe.info.splits[config.data.train_split].num_examples)
  check_config(config, workdir)  # every process, so that all of them stop on a mismatch
  barrier("config checked")  # before process 0 replaces the file the others read
  if jax.process_index() == 0:
    save_config(config, workdir)
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

  start = last_time = time.time()
  last_step = start_step
  saved_step = start_step
  for step in range(start_step + 1, config.num_train_steps + 1):
    host_batch = next(inputs.train)
    batch = sharding.shard_batch(host_batch, mesh)
    if _due(step, config.image_every):  # before the step: the same masks as the step
      visuals = jax.tree.map(np.asarray, visualise(state, batch))
      writer.write_images(step, reporting.visual_summaries(visuals, host_batch, palette,
                                                           normalisation))
    state, step_metrics = train_step(state, batch)
    log_due = _due(step, config.log_every) or step == config.num_train_steps
    if log_due:
      values = fetch_finite_metrics(step_metrics, step, checkpointer)
      now = time.time()
      rate = (step - last_step) / (now - last_time)
      eta = (config.num_train_steps - step) / rate
      logging.info("step %d/%d  %s  %.2f steps/s  ETA %.0fs", step, config.num_train_steps,
                   _format_metrics(values), rate, eta)
      writer.write_scalars(step, {**values, "steps_per_sec": rate,
                                  "learning_rate": learning_rate_at(config, step)})
      last_time, last_step = now, step
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
        f"({config.method}, step {results['step']}, {train_seconds:.0f}s of training)")
  return results
