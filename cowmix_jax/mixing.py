"""The perturbations compared in the paper (Table 1), one small class each.

Every perturbation is a :class:`Perturbation`, built from the config by the factory
registered under its ``config.method`` name (``make_perturbation(config)``): the factory
reads the config, the perturbation receives plain values. It works on one device's shard
of the unlabelled batch (it runs inside ``shard_map``) in three pure steps:

* ``sample(key, images) -> draws``: the random draws (masks, partners, transforms), a
  dict of arrays whose leading axis is the shard's batch;
* ``inputs(images, draws) -> (teacher_input, student_input)``;
* ``target(teacher_output, draws) -> (target, loss_mask)``: the teacher's prediction
  brought to the student's pixels, and where the consistency loss applies. It is linear
  in ``teacher_output``, so it serves probabilities and logits alike;
* ``confidence(teacher_probs, draws) -> [N, H, W]``: the teacher's confidence at the
  student's pixels, for the confidence weight (a default that most perturbations keep).

Mixing partners are shard-local indices (the ``partner`` draw), so no data crosses
devices. Adding a perturbation is a subclass and one ``@PERTURBATIONS.register(name)``
factory (docs/DEVELOPING.md).
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from cowmix_jax import masks, strong_augment
from cowmix_jax.models import input_normalisation
from cowmix_jax.normalisation import from_unit_rgb, to_unit_rgb
from cowmix_jax.registry import Registry

# The random draws of one perturbation for a shard: arrays with the batch leading.
Draws = dict[str, jax.Array]
# ``(key, (N, H, W)) -> [N, H, W]`` float32 masks.
MaskSampler = Callable[[jax.Array, tuple], jax.Array]


class Perturbation(abc.ABC):
  """What the student sees of the unlabelled images, and the target it must match."""

  # False for the supervised baseline: no unlabelled batch, no consistency term.
  uses_unlabelled: bool = True
  # "cow" or "box" for the mask-based methods (start-up checks of the mask settings).
  mask_kind: str | None = None

  @abc.abstractmethod
  def sample(self, key: jax.Array, images: jax.Array) -> Draws:
    """The random draws for ``images [N, H, W, C]``."""

  @abc.abstractmethod
  def inputs(self, images: jax.Array, draws: Draws) -> tuple[jax.Array, jax.Array]:
    """``(teacher_input, student_input)``, each ``[N, H, W, C]``."""

  @abc.abstractmethod
  def target(self, teacher_output: jax.Array, draws: Draws) -> tuple[jax.Array, jax.Array]:
    """``(target [N, H, W, K], loss_mask [N, H, W])`` from ``teacher_output [N, H, W, K]``
    (linear in it)."""

  def confidence(self, teacher_probs: jax.Array, draws: Draws) -> jax.Array:
    """``[N, H, W]`` the teacher's confidence at each student pixel, from ``teacher_probs
    [N, H, W, K]`` (paper, appendix D.3.4): the maximum of the target probabilities."""
    return jnp.max(self.target(teacher_probs, draws)[0], axis=-1)


def mix(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
  """``(1 - M) * a + M * b`` per pixel. a, b: ``[N, H, W, C]``; mask: ``[N, H, W]``."""
  mask = mask[..., None]
  return (1.0 - mask) * a + mask * b


def sample_partners(key: jax.Array, n: int) -> jax.Array:
  """A random derangement of ``range(n)``: nobody is paired with itself.

  Returns:
    ``[n]`` int32 partner indices: each index follows the previous one in a random cycle.
  """
  if n < 2:
    raise ValueError(
        f"mixing needs at least 2 unlabelled images per device to pair, got {n}; "
        "raise config.unlabelled_batch_size or use fewer devices")
  order = jax.random.permutation(key, n)
  return jnp.zeros(n, jnp.int32).at[order].set(jnp.roll(order, -1).astype(jnp.int32))


def cow_mask_sampler(mask_config: ml_collections.ConfigDict, p_range) -> MaskSampler:
  """Cow masks with ``config.mask``'s sigma range, exactness and canvas margin, a
  proportion drawn from ``p_range`` per mask."""
  return functools.partial(
      masks.cow_masks, sigma_range=tuple(mask_config.cow_sigma_range),
      p_range=tuple(p_range), exact_proportion=mask_config.exact_proportion,
      canvas_margin_sigmas=mask_config.cow_canvas_margin_sigmas)


def box_mask_sampler(p_range) -> MaskSampler:
  """Rectangles covering a proportion drawn from ``p_range`` per mask."""
  return functools.partial(masks.box_masks, p_range=tuple(p_range))


def constant_mask_sampler(alpha: float) -> MaskSampler:
  """ICT's masks: the constant ``1 - lambda`` per image, ``lambda ~ Beta(alpha, alpha)``."""

  def sample(key: jax.Array, shape: tuple) -> jax.Array:
    lam = jax.random.beta(key, alpha, alpha, shape[:1])
    return jnp.broadcast_to((1.0 - lam)[:, None, None], shape).astype(jnp.float32)

  return sample


class _Masked(Perturbation):
  """A perturbation driven by one mask per image."""

  def __init__(self, sample_mask: MaskSampler, mask_kind: str | None = None):
    self.sample_mask = sample_mask
    self.mask_kind = mask_kind


class Mix(_Masked):
  """CutMix / CowMix / ICT: the student sees ``mix(x_a, x_b, M)``, the target is the
  same mix of the teacher's predictions."""

  def sample(self, key: jax.Array, images: jax.Array) -> Draws:
    mask_key, partner_key = jax.random.split(key)
    n, height, width = images.shape[:3]
    return {"mask": self.sample_mask(mask_key, (n, height, width)),
            "partner": sample_partners(partner_key, n)}

  def inputs(self, images: jax.Array, draws: Draws) -> tuple[jax.Array, jax.Array]:
    return images, mix(images, images[draws["partner"]], draws["mask"])

  def target(self, teacher_output: jax.Array, draws: Draws):
    mixed = mix(teacher_output, teacher_output[draws["partner"]], draws["mask"])
    return mixed, jnp.ones(mixed.shape[:3], jnp.float32)

  def confidence(self, teacher_probs: jax.Array, draws: Draws) -> jax.Array:
    """The two teacher predictions' confidences (maximum probabilities), mixed like the
    predictions, as the authors' ICT code does. For a 0/1 mask (CutMix, CowMix) this is
    exactly the maximum of the mixed target; for ICT's blend it is not: two confident
    predictions of different classes blended half and half stay confident here."""
    top = jnp.max(teacher_probs, axis=-1, keepdims=True)
    return self.target(top, draws)[0][..., 0]


class Out(_Masked):
  """CutOut / CowOut: the student sees ``M * x``; the loss applies only where ``M = 1``."""

  def sample(self, key: jax.Array, images: jax.Array) -> Draws:
    return {"mask": self.sample_mask(key, images.shape[:3])}

  def inputs(self, images: jax.Array, draws: Draws):
    return images, images * draws["mask"][..., None]

  def target(self, teacher_output: jax.Array, draws: Draws):
    return teacher_output, draws["mask"]


# ---------------------------------------------------------------- standard augmentation


def _rotation_scale_flip(angle, scale, flip) -> jax.Array:
  """``[2, 2]`` linear part mapping output offsets (row, col) to source offsets."""
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rotation = jnp.array([[cos, -sin], [sin, cos]])
  flip_matrix = jnp.diag(jnp.array([1.0, jnp.where(flip, -1.0, 1.0)]))
  return rotation @ flip_matrix / scale


def sampling_matrix(angle, scale, flip, translation, size) -> jax.Array:
  """Homogeneous ``[3, 3]`` map from output pixel (row, col, 1) to source pixel.

  The transform rotates by ``angle``, zooms by ``scale`` and optionally flips columns,
  about the image centre, then shifts by ``translation`` (pixels, ``[2]``).
  """
  centre = (jnp.asarray(size, jnp.float32) - 1.0) / 2.0
  linear = _rotation_scale_flip(angle, scale, flip)
  offset = centre - linear @ centre + translation
  top = jnp.concatenate([linear, offset[:, None]], axis=1)
  return jnp.concatenate([top, jnp.array([[0.0, 0.0, 1.0]])], axis=0)


def warp(image: jax.Array, matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Bilinear resampling ``out[u] = image[matrix @ u]``, zeros outside.

  Args:
    image: ``[H, W, C]`` float32.
    matrix: ``[3, 3]`` output-to-source map in (row, col) pixel coordinates.

  Returns:
    ``([H, W, C] warped image, [H, W] float32 1 where the source lies inside the image)``.
  """
  height, width = image.shape[:2]
  rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                            jnp.arange(width, dtype=jnp.float32), indexing="ij")
  source = jnp.einsum("ij,jhw->ihw", matrix[:2],
                      jnp.stack([rows, cols, jnp.ones_like(rows)]))

  def resample(channel):
    return jax.scipy.ndimage.map_coordinates(
        channel, [source[0], source[1]], order=1, mode="constant", cval=0.0)

  warped = jax.vmap(resample, in_axes=2, out_axes=2)(image)
  inside = ((source[0] >= 0) & (source[0] <= height - 1) &
            (source[1] >= 0) & (source[1] <= width - 1))
  return warped, inside.astype(jnp.float32)


class AugmentationConsistency(Perturbation):
  """Standard augmentation (paper D.1): teacher and student see differently augmented
  copies; the teacher's prediction is warped into the student's frame (so translation
  cancels out) and the loss applies where both frames see the image.

  ``aug`` holds ``scale_range``, ``rotation_degrees``, ``flip``, ``translate_pixels``,
  ``brightness_std`` and ``contrast_log_std`` (``config.aug_consistency``'s fields).
  """

  def __init__(self, aug: ml_collections.ConfigDict):
    self.aug = ml_collections.FrozenConfigDict(aug)

  def _sample_transforms(self, key, n, size):
    aug = self.aug
    scale_key, angle_key, flip_key, shift_key = jax.random.split(key, 4)
    scale = masks.sample_log_uniform(scale_key, n, tuple(aug.scale_range))
    max_angle = math.radians(aug.rotation_degrees)
    angle = jax.random.uniform(angle_key, (n,), minval=-max_angle, maxval=max_angle)
    flip = jax.random.bernoulli(flip_key, 0.5 if aug.flip else 0.0, (n,))
    shift = jax.random.uniform(shift_key, (n, 2), minval=-aug.translate_pixels,
                               maxval=aug.translate_pixels)
    return jax.vmap(lambda a, s, f, t: sampling_matrix(a, s, f, t, size))(
        angle, scale, flip, shift)

  def _sample_photometric(self, key, n):
    aug = self.aug
    brightness_key, contrast_key = jax.random.split(key)
    brightness = aug.brightness_std * jax.random.normal(brightness_key, (n,))
    contrast = jnp.exp(aug.contrast_log_std * jax.random.normal(contrast_key, (n,)))
    return brightness, contrast

  def sample(self, key: jax.Array, images: jax.Array) -> Draws:
    n, height, width = images.shape[:3]
    keys = jax.random.split(key, 4)
    teacher_brightness, teacher_contrast = self._sample_photometric(keys[2], n)
    student_brightness, student_contrast = self._sample_photometric(keys[3], n)
    return {
        "teacher_matrix": self._sample_transforms(keys[0], n, (height, width)),
        "student_matrix": self._sample_transforms(keys[1], n, (height, width)),
        "teacher_photometric": jnp.stack([teacher_brightness, teacher_contrast], -1),
        "student_photometric": jnp.stack([student_brightness, student_contrast], -1),
    }

  @staticmethod
  def _augment(images, matrices, photometric):
    warped, _ = jax.vmap(warp)(images, matrices)
    brightness = photometric[:, 0][:, None, None, None]
    contrast = photometric[:, 1][:, None, None, None]
    return warped * contrast + brightness

  def inputs(self, images: jax.Array, draws: Draws):
    return (self._augment(images, draws["teacher_matrix"], draws["teacher_photometric"]),
            self._augment(images, draws["student_matrix"], draws["student_photometric"]))

  def target(self, teacher_output: jax.Array, draws: Draws):
    # Student pixel u shows source point S_B u, seen by the teacher at S_A^-1 S_B u.
    to_teacher = jnp.linalg.solve(draws["teacher_matrix"], draws["student_matrix"])
    target, inside_teacher = jax.vmap(warp)(teacher_output, to_teacher)
    ones = jnp.ones(teacher_output.shape[:3] + (1,), jnp.float32)
    _, inside_source = jax.vmap(warp)(ones, draws["student_matrix"])
    return target, inside_teacher * inside_source


class Supervised(Perturbation):
  """No unlabelled term: the supervised baseline (and full supervision with all labels).
  Its steps are the identity, so code that calls them anyway stays correct."""

  uses_unlabelled = False

  def sample(self, key: jax.Array, images: jax.Array) -> Draws:
    return {}

  def inputs(self, images: jax.Array, draws: Draws):
    return images, images

  def target(self, teacher_output: jax.Array, draws: Draws):
    return teacher_output, jnp.ones(teacher_output.shape[:3], jnp.float32)


# ------------------------------------------------------- FixMatch / UniMatch strong views


class StrongViews(Perturbation):
  """FixMatch's and UniMatch's perturbation: ``views`` strong views of each unlabelled
  image, each with its own colour augmentation (``strong_augment``) and, with
  probability ``mix_probability``, a mask (a CutMix box or a cow mask) through which the
  matching strong view of a partner image is pasted in. The target is the pseudo-label
  source's prediction on the weak view (the pipeline's image), mixed by the same masks.

  With ``complementary`` (two views), view 2 is always mixed with ``1 - m`` where view 1
  is with ``m`` (both always mixed): between them the partner shows on every pixel once.

  Views are a second axis: ``inputs`` returns ``(weak [N, H, W, C], strong [N, V, H, W,
  C])``, ``target`` ``([N, V, H, W, K], loss_mask [N, V, H, W])``. Masks are 0/1, so the
  argmax and the maximum of a mixed prediction are the mixed argmax and maximum.

  Attributes:
    views: 1 (FixMatch) or 2 (UniMatch).
    view_weights, feature_weight: the weights of each view's loss and of the
      feature-perturbation loss (None: no such stream) in ``(L_x + sum) / 2``.
  """

  def __init__(self, sample_mask: MaskSampler, mask_kind: str, normalisation: str,
               views: int, view_weights: tuple[float, ...],
               feature_weight: float | None = None, mix_probability: float = 0.5,
               complementary: bool = False,
               blur_sigma: tuple[float, float] = strong_augment.BLUR_SIGMA):
    if complementary and views != 2:
      raise ValueError("config.mask.complementary needs two strong views (unimatch)")
    self.sample_mask = sample_mask
    self.mask_kind = mask_kind
    self.normalisation = normalisation
    self.views = views
    self.view_weights = tuple(view_weights)
    self.feature_weight = feature_weight
    self.mix_probability = mix_probability
    self.complementary = complementary
    self.blur_sigma = strong_augment.check_blur_sigma_range(blur_sigma)

  def _sample_masks(self, key: jax.Array, n: int, height: int, width: int) -> jax.Array:
    """``[n, V, H, W]`` 0/1 masks, each applied with ``mix_probability`` (zeros when not),
    or ``m`` and ``1 - m`` (always applied) when complementary."""
    mask_key, apply_key = jax.random.split(key)
    if self.complementary:
      first = self.sample_mask(mask_key, (n, height, width))
      return jnp.stack([first, 1.0 - first], axis=1)
    drawn = self.sample_mask(mask_key, (n * self.views, height, width))
    applied = jax.random.bernoulli(apply_key, self.mix_probability, (n * self.views,))
    drawn = drawn * applied[:, None, None].astype(jnp.float32)
    return drawn.reshape(n, self.views, height, width)

  def sample(self, key: jax.Array, images: jax.Array) -> Draws:
    """``mask [N, V, H, W]``, ``partner [N]`` (one partner for all views, as UniMatch's
    mix image) and ``colour``: ``strong_augment.sample``'s draws, each ``[N, V, ...]``."""
    n, height, width = images.shape[:3]
    mask_key, partner_key, colour_key = jax.random.split(key, 3)
    colour = strong_augment.sample(colour_key, n * self.views, self.blur_sigma)
    return {"mask": self._sample_masks(mask_key, n, height, width),
            "partner": sample_partners(partner_key, n),
            "colour": jax.tree.map(lambda x: x.reshape((n, self.views) + x.shape[1:]), colour)}

  def inputs(self, images: jax.Array, draws: Draws) -> tuple[jax.Array, jax.Array]:
    rgb = to_unit_rgb(images, self.normalisation)
    views = []
    for view in range(self.views):
      colour = jax.tree.map(lambda x, v=view: x[:, v], draws["colour"])
      strong = from_unit_rgb(
          strong_augment.apply(rgb, colour, strong_augment.blur_kernel_size(self.blur_sigma[1])),
          self.normalisation)
      views.append(mix(strong, strong[draws["partner"]], draws["mask"][:, view]))
    return images, jnp.stack(views, axis=1)

  def target(self, teacher_output: jax.Array, draws: Draws):
    partner = teacher_output[draws["partner"]]
    mixed = jnp.stack([mix(teacher_output, partner, draws["mask"][:, view])
                       for view in range(self.views)], axis=1)
    return mixed, jnp.ones(mixed.shape[:-1], jnp.float32)


# ``@PERTURBATIONS.register("name")`` on a function ``config -> Perturbation``.
PERTURBATIONS: Registry[Callable[[ml_collections.ConfigDict], Perturbation]] = Registry(
    "config.method", "perturbations")


@PERTURBATIONS.register("supervised")
def _supervised(config: ml_collections.ConfigDict) -> Perturbation:
  return Supervised()


@PERTURBATIONS.register("aug")
def _aug(config: ml_collections.ConfigDict) -> Perturbation:
  return AugmentationConsistency(config.aug_consistency)


@PERTURBATIONS.register("ict")
def _ict(config: ml_collections.ConfigDict) -> Perturbation:
  return Mix(constant_mask_sampler(config.mask.ict_alpha))


@PERTURBATIONS.register("cutout")
def _cutout(config: ml_collections.ConfigDict) -> Perturbation:
  return Out(box_mask_sampler(config.mask.cutout_p_range), "box")


@PERTURBATIONS.register("cutmix")
def _cutmix(config: ml_collections.ConfigDict) -> Perturbation:
  return Mix(box_mask_sampler(config.mask.cutmix_p_range), "box")


@PERTURBATIONS.register("cowout")
def _cowout(config: ml_collections.ConfigDict) -> Perturbation:
  return Out(cow_mask_sampler(config.mask, config.mask.cowout_p_range), "cow")


@PERTURBATIONS.register("cowmix")
def _cowmix(config: ml_collections.ConfigDict) -> Perturbation:
  return Mix(cow_mask_sampler(config.mask, config.mask.cowmix_p_range), "cow")


def strong_view_mask(config: ml_collections.ConfigDict) -> tuple[MaskSampler, str]:
  """``config.mask.mix``'s mask sampler and kind: UniMatch's CutMix boxes, or cow masks
  with CowMix's settings (``cow_sigma_range`` at the training resolution,
  ``cowmix_p_range``)."""
  kind = config.mask.mix
  if kind == "box":
    return functools.partial(masks.cutmix_boxes,
                             area_range=tuple(config.mask.box_area_range),
                             aspect_range=tuple(config.mask.box_aspect_range)), "box"
  if kind == "cow":
    return cow_mask_sampler(config.mask, config.mask.cowmix_p_range), "cow"
  raise ValueError(f"config.mask.mix={kind!r}: choose box (UniMatch's CutMix) or cow")


@PERTURBATIONS.register("fixmatch")
def _fixmatch(config: ml_collections.ConfigDict) -> Perturbation:
  """FixMatch as UniMatch's baseline: one strong view, ``(L_x + L_s) / 2``."""
  if config.mask.complementary:
    raise ValueError("config.mask.complementary=True needs two strong views: use "
                     "config.method=unimatch")
  sample_mask, kind = strong_view_mask(config)
  return StrongViews(sample_mask, kind, input_normalisation(config.model), views=1,
                     view_weights=(1.0,), mix_probability=config.mask.mix_probability,
                     blur_sigma=config.strong_blur_sigma_range)


@PERTURBATIONS.register("unimatch")
def _unimatch(config: ml_collections.ConfigDict) -> Perturbation:
  """UniMatch V1: two strong views and the feature-perturbation stream,
  ``(L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``."""
  sample_mask, kind = strong_view_mask(config)
  return StrongViews(sample_mask, kind, input_normalisation(config.model), views=2,
                     view_weights=(0.25, 0.25), feature_weight=0.5,
                     mix_probability=config.mask.mix_probability,
                     complementary=config.mask.complementary,
                     blur_sigma=config.strong_blur_sigma_range)


def make_perturbation(config: ml_collections.ConfigDict) -> Perturbation:
  """The perturbation of ``config.method``, built from the config's settings."""
  return PERTURBATIONS.get(config.method)(config)
