"""Supervised and consistency losses, and confidence modulation."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from cowmix_jax.conventions import IGNORE_LABEL
from cowmix_jax.registry import Registry

# ``(student_logits [N, H, W, C], target [N, H, W, C]) -> [N, H, W]`` per-pixel distances.
CONSISTENCY_LOSSES = Registry("config.consistency_loss", "consistency losses")
# ``(confident [N, H, W] 0/1, valid [N, H, W] or None) -> [N, H, W]`` loss weights.
CONFIDENCE_MODES = Registry("config.confidence.mode", "confidence modes")


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  ignore_label: int = IGNORE_LABEL) -> jax.Array:
  """Mean per-pixel cross-entropy over pixels whose label is not ``ignore_label``.

  Args:
    logits: ``[N, H, W, C]`` float32.
    labels: ``[N, H, W]`` integer class ids, ``ignore_label`` for ignored pixels.

  Returns:
    scalar float32 (0 when every pixel is ignored).
  """
  valid = labels != ignore_label
  safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
  per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
  valid = valid.astype(jnp.float32)
  return jnp.sum(per_pixel * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def thresholded_cross_entropy(logits: jax.Array, pseudo_labels: jax.Array,
                              confidence: jax.Array, valid: jax.Array,
                              threshold: float) -> jax.Array:
  """FixMatch's and UniMatch's unlabelled loss: the cross-entropy of ``logits`` against
  hard ``pseudo_labels`` on the pixels whose pseudo-label's ``confidence`` is at least
  ``threshold``, summed and divided by the number of ``valid`` pixels (all of them, not
  only the confident ones: UniMatch's ``loss.sum() / (ignore_mask != 255).sum()``).

  Args:
    logits: ``[N, H, W, C]`` float32, the student's prediction on a strong view.
    pseudo_labels: ``[N, H, W]`` integer class ids (the weak view's argmax, mixed like
      the view).
    confidence: ``[N, H, W]`` the pseudo-label's probability.
    valid: ``[N, H, W]`` 1 where the pixel is part of the image (0 on padding).
    threshold: the confidence from which a pixel counts (UniMatch: 0.95).

  Returns:
    scalar float32 (0 when no pixel is valid).
  """
  valid = valid.astype(jnp.float32)
  per_pixel = _hard_cross_entropy(logits, pseudo_labels)
  counted = (jax.lax.stop_gradient(confidence) >= threshold).astype(jnp.float32) * valid
  return jnp.sum(per_pixel * counted) / jnp.maximum(jnp.sum(valid), 1.0)


def pseudo_label_total(supervised: jax.Array, view_losses: Sequence[jax.Array],
                       view_weights: Sequence[float], feature_loss: jax.Array | None = None,
                       feature_weight: float = 0.0) -> jax.Array:
  """UniMatch's total: ``(L_x + sum_v w_v L_s,v + w_fp L_fp) / 2`` (FixMatch: one view
  of weight 1, no feature term)."""
  total = supervised + sum(w * loss for w, loss in zip(view_weights, view_losses, strict=True))
  if feature_loss is not None:
    total = total + feature_weight * feature_loss
  return total / 2.0


def consistency_per_pixel(student_logits: jax.Array, target: jax.Array,
                          kind: str = "mse_prob") -> jax.Array:
  """Per-pixel distance between the student's prediction and the teacher's target.

  Args:
    student_logits: ``[N, H, W, C]`` float32.
    target: ``[N, H, W, C]`` teacher probabilities (``mse_prob``, ``kl``) or logits
      (``mse_logit``).
    kind: ``mse_prob`` (squared distance of softmax probabilities, summed over
      classes: the paper's loss), ``kl`` (KL(target || student)), ``mse_logit`` or
      ``hard_ce`` (cross-entropy against the target's argmax).

  Returns:
    ``[N, H, W]`` float32.
  """
  return CONSISTENCY_LOSSES.get(kind)(student_logits, target)


@CONSISTENCY_LOSSES.register("mse_prob")
def _mse_prob(student_logits: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.sum((jax.nn.softmax(student_logits) - target) ** 2, axis=-1)


@CONSISTENCY_LOSSES.register("kl")
def _kl(student_logits: jax.Array, target: jax.Array) -> jax.Array:
  log_student = jax.nn.log_softmax(student_logits)
  return jnp.sum(target * (jnp.log(jnp.maximum(target, 1e-12)) - log_student), axis=-1)


def _hard_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """``[N, H, W]`` cross-entropy of ``logits [N, H, W, C]`` against class ids."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))


@CONSISTENCY_LOSSES.register("hard_ce")
def _hard_ce(student_logits: jax.Array, target: jax.Array) -> jax.Array:
  """Cross-entropy against the target's argmax (a hard pseudo-label); with
  ``config.confidence.mode=pixel`` only pixels at or above the threshold count."""
  return _hard_cross_entropy(student_logits, jnp.argmax(target, axis=-1))


@CONSISTENCY_LOSSES.register("mse_logit")
def _mse_logit(student_logits: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.sum((student_logits - target) ** 2, axis=-1)


def confidence_weight(confidence: jax.Array, threshold: float = 0.97,
                      mode: str = "batch", valid: jax.Array | None = None) -> jax.Array:
  """Confidence modulation of the consistency loss (paper, appendix D.3.4).

  Args:
    confidence: ``[N, H, W]`` the teacher's confidence (maximum probability) at each
      student pixel (``Perturbation.confidence``).
    threshold: a pixel is confident when its confidence is >= threshold.
    mode: ``batch`` (the fraction of confident pixels in the batch, a scalar),
      ``pixel`` (a per-pixel 0/1 mask) or ``none`` (1).
    valid: optional ``[N, H, W]`` weights of the pixels that count in the batch
      fraction (padding excluded); all pixels count when None.

  Returns:
    ``[N, H, W]`` float32 weights (constant for ``batch`` and ``none``).
  """
  weigh = CONFIDENCE_MODES.get(mode)
  confident = (confidence >= threshold).astype(jnp.float32)
  return weigh(confident, valid)


@CONFIDENCE_MODES.register("batch")
def _batch_fraction(confident: jax.Array, valid: jax.Array | None) -> jax.Array:
  if valid is None:
    fraction = jnp.mean(confident)
  else:
    fraction = jnp.sum(confident * valid) / jnp.maximum(jnp.sum(valid), 1.0)
  return jnp.broadcast_to(fraction, confident.shape)


@CONFIDENCE_MODES.register("pixel")
def _per_pixel(confident: jax.Array, valid: jax.Array | None) -> jax.Array:
  return confident


@CONFIDENCE_MODES.register("none")
def _unweighted(confident: jax.Array, valid: jax.Array | None) -> jax.Array:
  return jnp.ones_like(confident)


def masked_consistency(student_logits: jax.Array, target: jax.Array,
                       loss_mask: jax.Array, weight: jax.Array,
                       kind: str = "mse_prob") -> jax.Array:
  """Consistency loss as in the paper's listings: ``mean(d * loss_mask * weight)``.

  The mean runs over all pixels of the batch (masked-out pixels count as zeros).
  """
  per_pixel = consistency_per_pixel(student_logits, target, kind)
  return jnp.mean(per_pixel * loss_mask * jax.lax.stop_gradient(weight))
