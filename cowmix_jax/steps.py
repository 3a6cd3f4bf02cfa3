"""Jitted train steps over a 1-D ``('data',)`` device mesh (``sharding.py``).

The train state is replicated and donated; batches are sharded along the batch axis.
The random draws of a perturbation (masks, partners, transforms) and the mixing itself
run per device inside ``jax.shard_map``, so they need no cross-device traffic; only the
network's forward and backward passes (and BatchNorm statistics) are global.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from cowmix_jax import losses, mixing
from cowmix_jax.sharding import DATA_AXIS, batch_sharded, replicated
from cowmix_jax.state import TrainState, update_teacher

Batch = dict[str, jax.Array]


def _shard_offset(local_batch: int) -> jax.Array:
  return jax.lax.axis_index(DATA_AXIS) * local_batch


def _to_local(draws: mixing.Draws, local_batch: int) -> mixing.Draws:
  """Global partner indices -> indices into this device's shard."""
  if "partner" not in draws:
    return draws
  return dict(draws, partner=draws["partner"] - _shard_offset(local_batch))


class ShardedPerturbation(NamedTuple):
  """A perturbation's functions over the data-sharded batch (each runs per shard)."""

  sample: Callable
  inputs: Callable
  target: Callable
  confidence: Callable


def make_perturbation_fns(perturbation: mixing.Perturbation,
                          mesh: Mesh) -> ShardedPerturbation:
  """Sharded ``sample``, ``inputs``, ``target`` and ``confidence`` of a perturbation.

  ``sample(key, images)`` draws per device with ``fold_in(key, device index)`` and
  returns partner indices in global batch coordinates (always inside the same shard),
  so a perturbation drawn on one mesh can be replayed on another.
  """
  spec = P(DATA_AXIS)

  def sample_local(key, images):
    local_batch = images.shape[0]
    local_key = jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
    draws = perturbation.sample(local_key, images)
    if "partner" in draws:
      draws = dict(draws, partner=draws["partner"] + _shard_offset(local_batch))
    return draws

  def inputs_local(images, draws):
    return perturbation.inputs(images, _to_local(draws, images.shape[0]))

  def target_local(teacher_output, draws):
    return perturbation.target(teacher_output, _to_local(draws, teacher_output.shape[0]))

  def confidence_local(teacher_probs, draws):
    return perturbation.confidence(teacher_probs, _to_local(draws, teacher_probs.shape[0]))

  def sharded(fn, out_specs):
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec), out_specs=out_specs)

  return ShardedPerturbation(
      sample=jax.shard_map(sample_local, mesh=mesh, in_specs=(P(), spec), out_specs=spec),
      inputs=sharded(inputs_local, (spec, spec)),
      target=sharded(target_local, (spec, spec)),
      confidence=sharded(confidence_local, spec))


BN_RUNNING_STATS = ("both_passes", "labelled_pass")


def check_bn_running_stats(model_config: ml_collections.ConfigDict) -> None:
  """Raises ValueError unless ``config.model.bn_running_stats`` is a known mode."""
  if model_config.bn_running_stats not in BN_RUNNING_STATS:
    raise ValueError(f"config.model.bn_running_stats={model_config.bn_running_stats!r}: "
                     f"expected one of {', '.join(BN_RUNNING_STATS)}")


def _apply_student(model, params, batch_stats, images, **kwargs):
  logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=True, mutable=["batch_stats"], **kwargs)
  return logits, updates.get("batch_stats", batch_stats)


PSEUDO_LABEL_SOURCES = ("auto", "student", "ema")
# fold_in data of the feature-dropout key: the step key's other children are device
# indices, which never reach it.
FEATURE_DROPOUT_STREAM = 2**31 - 1


def strong_views_of(config: ml_collections.ConfigDict) -> mixing.StrongViews | None:
  """``config.method``'s perturbation when it trains on strong views (fixmatch,
  unimatch); None for the mean-teacher methods and for a config that cannot build one
  (its own start-up check reports that)."""
  try:
    perturbation = mixing.make_perturbation(config)
  except ValueError:
    return None
  return perturbation if isinstance(perturbation, mixing.StrongViews) else None


def _builds(config: ml_collections.ConfigDict) -> bool:
  try:
    mixing.make_perturbation(config)
  except ValueError:
    return False
  return True


def pseudo_label_source(config: ml_collections.ConfigDict) -> str:
  """``config.teacher`` resolved: ``student`` or ``ema`` for the methods with strong
  views (auto: student, UniMatch V1), ``ema`` for the mean-teacher methods (which learn
  from their teacher only). ValueError, naming the key, otherwise."""
  teacher = config.teacher
  if teacher not in PSEUDO_LABEL_SOURCES:
    raise ValueError(f"config.teacher={teacher!r}: choose one of {PSEUDO_LABEL_SOURCES}")
  if strong_views_of(config) is not None:
    return "student" if teacher == "auto" else teacher
  if teacher == "student" and _builds(config):  # else its own check reports it
    learns = ("from labels only" if config.method == "supervised" else
              "from its mean teacher")
    raise ValueError(f"config.teacher=student: config.method={config.method} learns "
                     f"{learns}; only fixmatch and unimatch can take pseudo-labels from "
                     f"the student (leave config.teacher=auto)")
  return "ema"


def check_feature_perturbation(config: ml_collections.ConfigDict, model: nn.Module) -> None:
  """ValueError, naming the model, when the method needs a feature-perturbation pass
  (unimatch) that ``model`` cannot run (its ``__call__`` takes no
  ``feature_dropout_key``; docs/DEVELOPING.md)."""
  strong_views = strong_views_of(config)
  needs = strong_views is not None and strong_views.feature_weight is not None
  if needs and "feature_dropout_key" not in inspect.signature(model.__call__).parameters:
    raise ValueError(f"config.method={config.method} decodes perturbed features, which "
                     f"config.model.name={config.model.name} cannot: its __call__ takes no "
                     f"feature_dropout_key (models that can: unet, deeplab_v2, "
                     f"deeplab_v3plus)")


def teacher_warms_up(config: ml_collections.ConfigDict) -> bool:
  """Whether the teacher's decay follows UniMatch V2's warm-up (fixmatch and unimatch
  with ``config.teacher=ema``) rather than a fixed ``teacher_alpha``."""
  return strong_views_of(config) is not None and pseudo_label_source(config) == "ema"


def teacher_decay(config: ml_collections.ConfigDict, step: jax.Array) -> float | jax.Array:
  """The teacher's EMA decay at optimiser step ``step`` (0 for the first):
  ``teacher_alpha`` (a Python float, as the mean-teacher runs always used); for fixmatch
  and unimatch with ``config.teacher=ema``, UniMatch V2's warm-up
  ``min(1 - 1 / (step + 1), teacher_alpha)``."""
  if teacher_warms_up(config):
    return jnp.minimum(1.0 - 1.0 / (step.astype(jnp.float32) + 1.0), config.teacher_alpha)
  return config.teacher_alpha


def _teacher_output(model, state: TrainState, images):
  logits = model.apply({"params": state.teacher_params,
                        "batch_stats": state.teacher_batch_stats}, images, train=False)
  return jax.lax.stop_gradient(logits)


def make_update_fn(model: nn.Module, tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
  """``update(state, batch, draws) -> (state, metrics)``, not jitted.

  ``batch`` holds ``image [B, H, W, 3]``, ``label [B, H, W]`` and, for methods with an
  unlabelled term, ``unlabelled_image [Bu, H, W, 3]`` and optionally
  ``unlabelled_valid [Bu, H, W]`` (1 on image pixels, 0 on crop padding; the validity
  follows the perturbation into the student's frame, and the loss is masked by it).
  """
  perturbation = mixing.make_perturbation(config)
  sharded = make_perturbation_fns(perturbation, mesh)
  perturb_inputs, perturb_target = sharded.inputs, sharded.target
  kind = config.consistency_loss
  check_bn_running_stats(config.model)
  running_stats_from = config.model.bn_running_stats
  source = pseudo_label_source(config)
  threshold = config.pseudo_label_threshold

  def unlabelled_term(params, batch_stats, state, batch, draws):
    teacher_input, student_input = perturb_inputs(batch["unlabelled_image"], draws)
    teacher_logits = _teacher_output(model, state, teacher_input)
    teacher_probs = jax.nn.softmax(teacher_logits)
    target_probs, loss_mask = perturb_target(teacher_probs, draws)
    target = target_probs
    if kind == "mse_logit":
      target, _ = perturb_target(teacher_logits, draws)
    valid = None
    if "unlabelled_valid" in batch:  # padded pixels of the crops carry no loss
      valid = perturb_target(batch["unlabelled_valid"][..., None], draws)[0][..., 0]
      loss_mask = loss_mask * valid
    weight = losses.confidence_weight(sharded.confidence(teacher_probs, draws),
                                      config.confidence.threshold,
                                      config.confidence.mode, valid)
    student_logits, perturbed_stats = _apply_student(model, params, batch_stats,
                                                     student_input)
    if running_stats_from == "both_passes":
      batch_stats = perturbed_stats
    loss = losses.masked_consistency(student_logits, target, loss_mask, weight, kind)
    return loss, batch_stats, jnp.mean(weight)

  def strong_view_term(params, batch_stats, state, batch, draws):
    """FixMatch / UniMatch: ``(per-view losses, feature loss or None, batch_stats,
    confident fraction)``; see ``losses.thresholded_cross_entropy``."""
    weak = batch["unlabelled_image"]
    _, strong = perturb_inputs(weak, draws)  # [N, V, H, W, C]
    n, views = strong.shape[:2]
    weak_logits = feature_logits = None
    weak_stats = batch_stats
    if perturbation.feature_weight is not None:
      key = jax.random.fold_in(jax.random.fold_in(state.key, state.step),
                               FEATURE_DROPOUT_STREAM)
      (weak_logits, feature_logits), weak_stats = _apply_student(
          model, params, batch_stats, weak, feature_dropout_key=key)
    elif source == "student":
      weak_logits, weak_stats = _apply_student(model, params, batch_stats, weak)
    pseudo = (jax.lax.stop_gradient(weak_logits) if source == "student"
              else _teacher_output(model, state, weak))
    probs = jax.nn.softmax(pseudo)
    valid = batch.get("unlabelled_valid", jnp.ones(weak.shape[:3], jnp.float32))
    target, _ = perturb_target(probs, draws)  # [N, V, H, W, K]
    mixed_valid = perturb_target(valid[..., None], draws)[0][..., 0]  # [N, V, H, W]
    strong_logits, strong_stats = _apply_student(
        model, params, weak_stats, strong.reshape((n * views,) + strong.shape[2:]))
    strong_logits = strong_logits.reshape((n, views) + strong_logits.shape[1:])
    view_losses = [losses.thresholded_cross_entropy(
        strong_logits[:, v], jnp.argmax(target[:, v], -1), jnp.max(target[:, v], -1),
        mixed_valid[:, v], threshold) for v in range(views)]
    feature_loss = None
    if feature_logits is not None:
      feature_loss = losses.thresholded_cross_entropy(
          feature_logits, jnp.argmax(probs, -1), jnp.max(probs, -1), valid, threshold)
    if running_stats_from == "both_passes":
      batch_stats = strong_stats
    confident = (jnp.max(probs, -1) >= threshold).astype(jnp.float32) * valid
    fraction = jnp.sum(confident) / jnp.maximum(jnp.sum(valid), 1.0)
    return view_losses, feature_loss, batch_stats, fraction

  def loss_fn(params, state, batch, draws):
    logits, batch_stats = _apply_student(model, params, state.batch_stats, batch["image"])
    supervised = losses.cross_entropy(logits, batch["label"])
    consistency = confidence = jnp.zeros((), jnp.float32)
    if isinstance(perturbation, mixing.StrongViews):
      view_losses, feature_loss, batch_stats, confidence = strong_view_term(
          params, batch_stats, state, batch, draws)
      total = losses.pseudo_label_total(supervised, view_losses, perturbation.view_weights,
                                        feature_loss, perturbation.feature_weight or 0.0)
      consistency = 2 * total - supervised  # the weighted unlabelled losses
    else:
      if perturbation.uses_unlabelled:
        consistency, batch_stats, confidence = unlabelled_term(
            params, batch_stats, state, batch, draws)
      total = supervised + config.cons_weight * consistency
    aux = {"loss": total, "supervised_loss": supervised,
           "consistency_loss": consistency, "confidence": confidence}
    return total, (batch_stats, aux)

  def update(state: TrainState, batch: Batch, draws) -> tuple[TrainState, dict]:
    grads, (batch_stats, aux) = jax.grad(loss_fn, has_aux=True)(
        state.params, state, batch, draws)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1,
                              params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state)
    aux["grad_norm"] = optax.tree.norm(grads)
    return update_teacher(new_state, teacher_decay(config, state.step)), aux

  return update


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
  """Jitted ``train_step(state, batch) -> (state, metrics)``; the state is donated.

  The step key is ``fold_in(state.key, state.step)``, so a run is a function of the
  config's seed and the data.
  """
  perturbation = mixing.make_perturbation(config)
  sample = make_perturbation_fns(perturbation, mesh).sample
  update = make_update_fn(model, tx, config, mesh)

  def train_step(state: TrainState, batch: Batch):
    draws = {}
    if perturbation.uses_unlabelled:
      step_key = jax.random.fold_in(state.key, state.step)
      draws = sample(step_key, batch["unlabelled_image"])
    return update(state, batch, draws)

  return jax.jit(train_step, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def make_visualise_fn(model: nn.Module, config: ml_collections.ConfigDict,
                      mesh: Mesh) -> Callable:
  """Jitted ``visualise(state, batch) -> dict`` of what a train step does to a batch.

  Called with the state *before* the step, it draws the same perturbation as the step
  (same key). Returns ``label`` and ``teacher_prediction`` ``[B, H, W]`` int32 of the
  labelled images and, for methods with an unlabelled term, ``student_input [Bu, H, W,
  3]``, ``teacher_target`` and ``student_prediction`` ``[Bu, H, W]`` int32 (argmax),
  ``loss_mask [Bu, H, W]`` and, for mask-based methods, ``mask [Bu, H, W]``. For
  fixmatch and unimatch each of these has a views axis after the batch (``[Bu, V,
  ...]``): the strong views, their mixed pseudo-labels, the pixels that pass the
  threshold as ``loss_mask``; a student source is shown in evaluation mode.
  """
  perturbation = mixing.make_perturbation(config)
  sharded = make_perturbation_fns(perturbation, mesh)
  sample, perturb_inputs, perturb_target = sharded.sample, sharded.inputs, sharded.target
  strong_views = isinstance(perturbation, mixing.StrongViews)
  source = pseudo_label_source(config)

  def student_output(state, images):
    return model.apply({"params": state.params, "batch_stats": state.batch_stats},
                       images, train=False)

  def unlabelled_visuals(state, batch):
    draws = sample(jax.random.fold_in(state.key, state.step), batch["unlabelled_image"])
    teacher_input, student_input = perturb_inputs(batch["unlabelled_image"], draws)
    pseudo = (student_output(state, teacher_input) if strong_views and source == "student"
              else _teacher_output(model, state, teacher_input))
    target, loss_mask = perturb_target(jax.nn.softmax(pseudo), draws)
    flat = student_input.reshape((-1,) + student_input.shape[-3:])
    student_logits = student_output(state, flat).reshape(target.shape)
    if strong_views:
      valid = batch.get("unlabelled_valid", jnp.ones(teacher_input.shape[:3], jnp.float32))
      mixed_valid = perturb_target(valid[..., None], draws)[0][..., 0]
      confident = jnp.max(target, -1) >= config.pseudo_label_threshold
      loss_mask = confident.astype(jnp.float32) * mixed_valid
    out = {"student_input": student_input, "teacher_target": jnp.argmax(target, -1),
           "student_prediction": jnp.argmax(student_logits, -1), "loss_mask": loss_mask}
    if "mask" in draws:
      out["mask"] = draws["mask"]
    return out

  def visualise(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
    out = {"label": batch["label"],
           "teacher_prediction": jnp.argmax(_teacher_output(model, state, batch["image"]), -1)}
    if perturbation.uses_unlabelled:
      out.update(unlabelled_visuals(state, batch))
    return out

  return jax.jit(visualise, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=batch_sharded(mesh))


def resize_to_labels(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Bilinearly resizes ``logits [B, h, w, C]`` to the labels' ``[B, H, W]`` (images
  evaluated at a reduced resolution, ``config.data.downscale``); same size: unchanged."""
  if logits.shape[1:3] == labels.shape[1:3]:
    return logits
  shape = labels.shape[:3] + logits.shape[3:]
  return jax.image.resize(logits, shape, method="bilinear", antialias=False)
