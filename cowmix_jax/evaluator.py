"""The one evaluation path: a model's variables scored on a split's evaluation batches.

Used by the training loop (periodic and final evaluations), ``evaluate.py`` (a
checkpoint, with flip or sliding-window inference and saved predictions), ``predict.py``
(the logits function) and the diagnostics in ``cowmix_jax/experiments/``::

    evaluator = Evaluator(model, mesh, num_classes, lambda: pipeline.eval_batches(...))
    confusion = evaluator.confusion(variables)  # [C, C] int64
    metrics.mean_iou(confusion), metrics.per_class_iou(confusion)

Logits are upsampled to the labels' resolution when the network saw shrunk images
(``config.data.downscale``); pixels labelled 255 (void, padding) are not scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from cowmix_jax import metrics, sharding, steps


def window_starts(size: int, window: int, stride: int) -> list[int]:
  """Start offsets of windows of ``window`` that tile ``size`` with ``stride``, the last
  one flush with the end."""
  if window >= size:
    return [0]
  starts = list(range(0, size - window, stride))
  return starts + [size - window]


def make_logits_fn(model, flip: bool = False,
                   window: tuple[int, int] | None = None,
                   stride: tuple[int, int] | None = None):
  """``logits(variables, images [B, H, W, 3]) -> [B, H, W, C]`` with optional flip
  averaging and sliding-window averaging (windows ``window``, offsets ``stride``)."""

  def single(variables, images):
    logits = model.apply(variables, images, train=False)
    if flip:
      mirrored = model.apply(variables, images[:, :, ::-1], train=False)
      logits = (logits + mirrored[:, :, ::-1]) / 2
    return logits

  if window is None:
    return single

  def windowed(variables, images):
    height, width = images.shape[1:3]
    win_h, win_w = min(window[0], height), min(window[1], width)
    total, count = 0.0, jnp.zeros((1, height, width, 1), jnp.float32)
    for top in window_starts(height, win_h, stride[0]):
      for left in window_starts(width, win_w, stride[1]):
        logits = single(variables, images[:, top:top + win_h, left:left + win_w])
        pad = ((0, 0), (top, height - top - win_h), (left, width - left - win_w), (0, 0))
        total = total + jnp.pad(logits, pad)
        count = count + jnp.pad(jnp.ones((1, win_h, win_w, 1)), pad)
    return total / count

  return windowed


def make_predict_fn(model, mesh, num_classes: int, **logits_options) -> Callable:
  """Jitted ``predict(variables, images, labels) -> (predictions, confusion)``.

  Args of the returned function: variables ``{"params", "batch_stats"}`` (replicated);
  images ``[B, h, w, 3]`` and labels ``[B, H, W]`` (sharded along the batch; 255 =
  ignore, also for padding; the logits are resized to the labels if ``(h, w) != (H,
  W)``). Returns ``[B, H, W]`` int32 predictions and the batch's ``[C, C]`` int32
  confusion matrix (one batch stays far below 2^31 pixels; the split's total is summed
  in int64 on the host). ``logits_options``: see ``make_logits_fn``.
  """
  logits_fn = make_logits_fn(model, **logits_options)

  def predict(variables, images, labels):
    logits = steps.resize_to_labels(logits_fn(variables, images), labels)
    predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return predictions, metrics.confusion_matrix(labels, predictions, num_classes)

  replicated, sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(predict, in_shardings=(replicated, sharded, sharded),
                 out_shardings=(sharded, replicated))


class Evaluator:
  """Scores variables of ``model`` on the batches ``batches()`` yields.

  ``batches``: a function returning an iterable of evaluation batches (``image``,
  ``label``; this process's share: ``pipeline.eval_batches``), called afresh for each
  evaluation. ``flip``, ``window`` and ``stride``: test-time augmentation
  (``make_logits_fn``).
  """

  def __init__(self, model, mesh, num_classes: int, batches: Callable[[], Iterable[dict]],
               **logits_options):
    self.mesh = mesh
    self.num_classes = num_classes
    self.batches = batches
    self._predict = make_predict_fn(model, mesh, num_classes, **logits_options)

  def confusion(self, variables: dict,
                on_predictions: Callable[[dict, np.ndarray], None] | None = None
                ) -> np.ndarray:
    """The ``[C, C]`` int64 confusion matrix of ``variables`` over every batch (each
    batch's int32 matrix added on the host, so a split of more than 2^31 pixels in one
    cell does not overflow); ``on_predictions(batch, [B, H, W] predictions)`` sees each
    batch (one process)."""
    confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
    for batch in self.batches():
      images, labels = sharding.shard_batch((batch["image"], batch["label"]), self.mesh)
      predictions, batch_confusion = self._predict(variables, images, labels)
      confusion += np.asarray(batch_confusion, np.int64)
      if on_predictions is not None:
        on_predictions(batch, np.asarray(predictions))
    return confusion
