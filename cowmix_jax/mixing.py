"""The perturbations compared in the paper (Table 1), one small class each.

A perturbation works on one device's shard of the unlabelled batch (it runs inside
``shard_map``) in three pure steps:

* ``sample(key, images, config) -> params``: the random draws (masks, partners,
  transforms), a dict of arrays whose leading axis is the shard's batch;
* ``inputs(images, params) -> (teacher_input, student_input)``;
* ``target(teacher_output, params) -> (target, loss_mask)``: the teacher's prediction
  brought to the student's pixels, and where the consistency loss applies. It is linear
  in ``teacher_output``, so it serves probabilities and logits alike.

Mixing partners are shard-local indices, so no data crosses devices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

from cowmix_jax import masks

Params = dict[str, jax.Array]


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


def _sample_mask(key: jax.Array, shape, config: ml_collections.ConfigDict, kind: str,
                 p_range) -> jax.Array:
  if kind == "cow":
    return masks.cow_masks(key, shape, tuple(config.mask.cow_sigma_range), tuple(p_range),
                           exact_proportion=config.mask.exact_proportion,
                           canvas_margin_sigmas=config.mask.get(
                               "cow_canvas_margin_sigmas", masks.WRAP_MARGIN_SIGMAS))
  return masks.box_masks(key, shape, tuple(p_range))


class Mix:
  """CutMix / CowMix: the student sees ``mix(x_a, x_b, M)``, the target is the same mix."""

  uses_unlabelled = True

  def __init__(self, mask_kind: str, p_range_field: str):
    self.mask_kind = mask_kind
    self.p_range_field = p_range_field

  def sample(self, key: jax.Array, images: jax.Array,
             config: ml_collections.ConfigDict) -> Params:
    mask_key, partner_key = jax.random.split(key)
    n, height, width = images.shape[:3]
    mask = _sample_mask(mask_key, (n, height, width), config, self.mask_kind,
                        config.mask[self.p_range_field])
    return {"mask": mask, "partner": sample_partners(partner_key, n)}

  def inputs(self, images: jax.Array, params: Params) -> tuple[jax.Array, jax.Array]:
    return images, mix(images, images[params["partner"]], params["mask"])

  def target(self, teacher_output: jax.Array, params: Params):
    mixed = mix(teacher_output, teacher_output[params["partner"]], params["mask"])
    return mixed, jnp.ones(mixed.shape[:3], jnp.float32)


class InterpolationConsistency(Mix):
  """ICT: a mix whose mask is the constant ``1 - lambda``, lambda ~ Beta(a, a) per image."""

  def __init__(self):
    super().__init__("constant", "")

  def sample(self, key: jax.Array, images: jax.Array,
             config: ml_collections.ConfigDict) -> Params:
    lam_key, partner_key = jax.random.split(key)
    n, height, width = images.shape[:3]
    lam = jax.random.beta(lam_key, config.mask.ict_alpha, config.mask.ict_alpha, (n,))
    mask = jnp.broadcast_to((1.0 - lam)[:, None, None], (n, height, width))
    return {"mask": mask.astype(jnp.float32), "partner": sample_partners(partner_key, n)}


class Out:
  """CutOut / CowOut: the student sees ``M * x``; the loss applies only where ``M = 1``."""

  uses_unlabelled = True

  def __init__(self, mask_kind: str, p_range_field: str):
    self.mask_kind = mask_kind
    self.p_range_field = p_range_field

  def sample(self, key: jax.Array, images: jax.Array,
             config: ml_collections.ConfigDict) -> Params:
    n, height, width = images.shape[:3]
    return {"mask": _sample_mask(key, (n, height, width), config, self.mask_kind,
                                 config.mask[self.p_range_field])}

  def inputs(self, images: jax.Array, params: Params):
    return images, images * params["mask"][..., None]

  def target(self, teacher_output: jax.Array, params: Params):
    return teacher_output, params["mask"]


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


class AugmentationConsistency:
  """Standard augmentation (paper D.1): teacher and student see differently augmented
  copies; the teacher's prediction is warped into the student's frame (so translation
  cancels out) and the loss applies where both frames see the image."""

  uses_unlabelled = True

  def _sample_transforms(self, key, n, size, config):
    aug = config.aug_consistency
    scale_key, angle_key, flip_key, shift_key = jax.random.split(key, 4)
    scale = masks.sample_log_uniform(scale_key, n, tuple(aug.scale_range))
    max_angle = math.radians(aug.rotation_degrees)
    angle = jax.random.uniform(angle_key, (n,), minval=-max_angle, maxval=max_angle)
    flip = jax.random.bernoulli(flip_key, 0.5 if aug.flip else 0.0, (n,))
    shift = jax.random.uniform(shift_key, (n, 2), minval=-aug.translate_pixels,
                               maxval=aug.translate_pixels)
    return jax.vmap(lambda a, s, f, t: sampling_matrix(a, s, f, t, size))(
        angle, scale, flip, shift)

  def _sample_photometric(self, key, n, config):
    aug = config.aug_consistency
    brightness_key, contrast_key = jax.random.split(key)
    brightness = aug.brightness_std * jax.random.normal(brightness_key, (n,))
    contrast = jnp.exp(aug.contrast_log_std * jax.random.normal(contrast_key, (n,)))
    return brightness, contrast

  def sample(self, key: jax.Array, images: jax.Array,
             config: ml_collections.ConfigDict) -> Params:
    n, height, width = images.shape[:3]
    keys = jax.random.split(key, 4)
    teacher_brightness, teacher_contrast = self._sample_photometric(keys[2], n, config)
    student_brightness, student_contrast = self._sample_photometric(keys[3], n, config)
    return {
        "teacher_matrix": self._sample_transforms(keys[0], n, (height, width), config),
        "student_matrix": self._sample_transforms(keys[1], n, (height, width), config),
        "teacher_photometric": jnp.stack([teacher_brightness, teacher_contrast], -1),
        "student_photometric": jnp.stack([student_brightness, student_contrast], -1),
    }

  @staticmethod
  def _augment(images, matrices, photometric):
    warped, _ = jax.vmap(warp)(images, matrices)
    brightness = photometric[:, 0][:, None, None, None]
    contrast = photometric[:, 1][:, None, None, None]
    return warped * contrast + brightness

  def inputs(self, images: jax.Array, params: Params):
    return (self._augment(images, params["teacher_matrix"], params["teacher_photometric"]),
            self._augment(images, params["student_matrix"], params["student_photometric"]))

  def target(self, teacher_output: jax.Array, params: Params):
    # Student pixel u shows source point S_B u, seen by the teacher at S_A^-1 S_B u.
    to_teacher = jnp.linalg.solve(params["teacher_matrix"], params["student_matrix"])
    target, inside_teacher = jax.vmap(warp)(teacher_output, to_teacher)
    ones = jnp.ones(teacher_output.shape[:3] + (1,), jnp.float32)
    _, inside_source = jax.vmap(warp)(ones, params["student_matrix"])
    return target, inside_teacher * inside_source


class Supervised:
  """No unlabelled term: the supervised baseline (and full supervision with all labels)."""

  uses_unlabelled = False


PERTURBATIONS = {
    "supervised": Supervised(),
    "aug": AugmentationConsistency(),
    "ict": InterpolationConsistency(),
    "cutout": Out("box", "cutout_p_range"),
    "cutmix": Mix("box", "cutmix_p_range"),
    "cowout": Out("cow", "cowout_p_range"),
    "cowmix": Mix("cow", "cowmix_p_range"),
}


def get_perturbation(method: str):
  """The perturbation registered under ``config.method``."""
  if method not in PERTURBATIONS:
    raise ValueError(f"config.method={method!r} is not known; choose one of "
                     f"{sorted(PERTURBATIONS)}")
  return PERTURBATIONS[method]
