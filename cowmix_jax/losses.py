"""Supervised and consistency losses, and confidence modulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE_LABEL = 255
CONSISTENCY_LOSSES = ("mse_prob", "kl", "mse_logit")
CONFIDENCE_MODES = ("batch", "pixel", "none")


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


def consistency_per_pixel(student_logits: jax.Array, target: jax.Array,
                          kind: str = "mse_prob") -> jax.Array:
  """Per-pixel distance between the student's prediction and the teacher's target.

  Args:
    student_logits: ``[N, H, W, C]`` float32.
    target: ``[N, H, W, C]`` teacher probabilities (``mse_prob``, ``kl``) or logits
      (``mse_logit``).
    kind: ``mse_prob`` (squared distance of softmax probabilities, summed over
      classes: the paper's loss), ``kl`` (KL(target || student)) or ``mse_logit``.

  Returns:
    ``[N, H, W]`` float32.
  """
  if kind == "mse_prob":
    return jnp.sum((jax.nn.softmax(student_logits) - target) ** 2, axis=-1)
  if kind == "kl":
    log_student = jax.nn.log_softmax(student_logits)
    return jnp.sum(target * (jnp.log(jnp.maximum(target, 1e-12)) - log_student), axis=-1)
  if kind == "mse_logit":
    return jnp.sum((student_logits - target) ** 2, axis=-1)
  raise ValueError(f"consistency loss must be one of {CONSISTENCY_LOSSES}, got {kind!r}")


def confidence_weight(target_probs: jax.Array, threshold: float = 0.97,
                      mode: str = "batch", valid: jax.Array | None = None) -> jax.Array:
  """Confidence modulation of the consistency loss (paper, appendix D.3.4).

  Args:
    target_probs: ``[N, H, W, C]`` teacher target probabilities.
    threshold: a pixel is confident when its max probability is >= threshold.
    mode: ``batch`` (the fraction of confident pixels in the batch, a scalar),
      ``pixel`` (a per-pixel 0/1 mask) or ``none`` (1).
    valid: optional ``[N, H, W]`` weights of the pixels that count in the batch
      fraction (padding excluded); all pixels count when None.

  Returns:
    ``[N, H, W]`` float32 weights (constant for ``batch`` and ``none``).
  """
  confident = (jnp.max(target_probs, axis=-1) >= threshold).astype(jnp.float32)
  if mode == "batch":
    if valid is None:
      fraction = jnp.mean(confident)
    else:
      fraction = jnp.sum(confident * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    return jnp.broadcast_to(fraction, confident.shape)
  if mode == "pixel":
    return confident
  if mode == "none":
    return jnp.ones_like(confident)
  raise ValueError(f"confidence mode must be one of {CONFIDENCE_MODES}, got {mode!r}")


def masked_consistency(student_logits: jax.Array, target: jax.Array,
                       loss_mask: jax.Array, weight: jax.Array,
                       kind: str = "mse_prob") -> jax.Array:
  """Consistency loss as in the paper's listings: ``mean(d * loss_mask * weight)``.

  The mean runs over all pixels of the batch (masked-out pixels count as zeros).
  """
  per_pixel = consistency_per_pixel(student_logits, target, kind)
  return jnp.mean(per_pixel * loss_mask * jax.lax.stop_gradient(weight))
