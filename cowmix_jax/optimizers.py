"""The optimiser and its learning-rate schedule, from the config.

``config.optimizer``: ``adam`` (the CowMix paper's, appendix D.3) or ``sgd`` (momentum
0.9, as UniMatch and most segmentation code train); ``config.lr_schedule``: ``constant``
(the paper's), ``cosine`` (to 0 at the last step) or ``poly`` (``(1 - step / steps) **
0.9``, UniMatch's); ``config.weight_decay`` adds ``weight_decay * param`` to each
gradient before the optimiser, as PyTorch's ``weight_decay`` argument does for both.
Pure optax: the start-up checks (``config_checks``) name a bad choice before any data
is read.
"""

from __future__ import annotations

import ml_collections
import optax

from cowmix_jax.registry import Registry

# ``(peak learning rate, num_train_steps) -> a float or an optax schedule``.
LR_SCHEDULES = Registry("config.lr_schedule", "learning-rate schedules")
# ``(learning rate: a float or an optax schedule) -> an optax transformation``.
OPTIMIZERS = Registry("config.optimizer", "optimisers")

SGD_MOMENTUM = 0.9
POLY_POWER = 0.9


@LR_SCHEDULES.register("constant")
def _constant(peak: float, num_train_steps: int):
  return peak


@LR_SCHEDULES.register("cosine")
def _cosine(peak: float, num_train_steps: int):
  return optax.cosine_decay_schedule(peak, num_train_steps)


@LR_SCHEDULES.register("poly")
def _poly(peak: float, num_train_steps: int):
  """``peak * (1 - step / num_train_steps) ** 0.9`` (UniMatch's, DeepLab's)."""
  return optax.polynomial_schedule(peak, 0.0, POLY_POWER, num_train_steps)


@OPTIMIZERS.register("adam")
def _adam(learning_rate) -> optax.GradientTransformation:
  return optax.adam(learning_rate)


@OPTIMIZERS.register("sgd")
def _sgd(learning_rate) -> optax.GradientTransformation:
  """``torch.optim.SGD(momentum=0.9)``: ``buffer = 0.9 * buffer + gradient`` (the first
  buffer is the first gradient), ``param -= learning_rate * buffer``."""
  return optax.sgd(learning_rate, momentum=SGD_MOMENTUM)


def learning_rate_schedule(config: ml_collections.ConfigDict, scale: float = 1.0):
  """``scale * config.learning_rate`` following ``config.lr_schedule`` over
  ``config.num_train_steps``: a float (constant) or an optax schedule of the step."""
  return LR_SCHEDULES.get(config.lr_schedule)(
      config.learning_rate * scale, config.num_train_steps)


def learning_rate_at(config: ml_collections.ConfigDict, step: int) -> float:
  schedule = learning_rate_schedule(config)
  return float(schedule(step) if callable(schedule) else schedule)


def _optimizer(config: ml_collections.ConfigDict,
               scale: float = 1.0) -> optax.GradientTransformation:
  """``config.optimizer`` at ``scale`` times the learning rate, with the weight decay
  added to the gradient first (none at 0, so the state is the optimiser's own)."""
  optimizer = OPTIMIZERS.get(config.optimizer)(learning_rate_schedule(config, scale))
  if config.weight_decay:
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optimizer)
  return optimizer


def make_optimizer(config: ml_collections.ConfigDict,
                   pretrained_labels=None) -> optax.GradientTransformation:
  """``config.optimizer`` at ``config.learning_rate``, following ``config.lr_schedule``.
  With ``pretrained_labels`` (a tree like the params of ``pretrained`` / ``new``
  strings), pretrained parameters get ``config.model.pretrained_lr_multiplier`` times
  the rate (0.1 in the CowMix authors' code; UniMatch's head learns at 10x its
  backbone's rate, the same ratio), via ``optax.multi_transform``."""
  if pretrained_labels is None:
    return _optimizer(config)
  return optax.multi_transform(
      {"pretrained": _optimizer(config, config.model.pretrained_lr_multiplier),
       "new": _optimizer(config)}, pretrained_labels)
