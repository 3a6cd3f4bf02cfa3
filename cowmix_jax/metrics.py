"""Confusion matrices and intersection-over-union, accumulated over a whole split."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cowmix_jax.conventions import IGNORE_LABEL


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> jax.Array:
  """Counts of (true class, predicted class) pairs over valid pixels.

  Args:
    labels: ``[N, H, W]`` integer ids, ``ignore_label`` for ignored pixels.
    predictions: ``[N, H, W]`` integer predicted ids in ``[0, num_classes)``.

  Returns:
    ``[C, C]`` int32; rows are true classes, columns predictions.
  """
  labels = labels.astype(jnp.int32)
  valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
  index = jnp.where(valid, labels * num_classes + predictions.astype(jnp.int32), 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32)
  counts = counts.at[index.reshape(-1)].add(valid.reshape(-1).astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
  """IoU of each class, ``TP / (TP + FP + FN)``; NaN for a class absent from both.

  Args:
    confusion: ``[C, C]`` counts accumulated over the split.

  Returns:
    ``[C]`` float64.
  """
  confusion = np.asarray(confusion, np.float64)
  true_positive = np.diag(confusion)
  union = confusion.sum(axis=0) + confusion.sum(axis=1) - true_positive
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
  """Mean of the per-class IoU over classes present in labels or predictions."""
  iou = per_class_iou(confusion)
  return float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan")


def class_shares(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Share of the scored pixels in each class: in the labels, and in the predictions.

  Args:
    confusion: ``[C, C]`` counts (rows true classes, columns predictions).

  Returns:
    ``(true_share [C], predicted_share [C])`` float64, each summing to 1 (NaN if empty).
  """
  confusion = np.asarray(confusion, np.float64)
  total = confusion.sum()
  with np.errstate(invalid="ignore", divide="ignore"):
    return confusion.sum(axis=1) / total, confusion.sum(axis=0) / total


def format_iou_table(confusion: np.ndarray, class_names) -> str:
  """A plain-text table of per-class IoU (percent) and the mean."""
  iou = per_class_iou(confusion)
  width = max(len(name) for name in list(class_names) + ["mIoU"])
  lines = [f"{name:<{width}}  {100 * value:6.2f}" for name, value in zip(class_names, iou)]
  lines.append(f"{'mIoU':<{width}}  {100 * mean_iou(confusion):6.2f}")
  return "\n".join(lines)
