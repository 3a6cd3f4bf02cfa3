"""Start-up checks of a run's config, before any work: every bad key named at once.

``validate_config`` checks what the config alone decides (names in the registries,
ranges, the mesh); ``check_against_data`` what depends on the prepared dataset;
``resolve_training_length`` turns epochs into steps once the training split's size is
known.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import ml_collections
from absl import logging

from cowmix_jax import (
  config_base,
  losses,
  masks,
  method_keys,
  mixing,
  models,
  optimizers,
  steps,
  strong_augment,
)
from cowmix_jax import data as data_lib
from cowmix_jax.cli import ConfigError
from cowmix_jax.conventions import NORMALISATIONS
from cowmix_jax.data import splits
from cowmix_jax.models import pretrained as pretrained_lib

BATCH_KEYS = ("batch_size", "unlabelled_batch_size", "eval_batch_size")
P_RANGE_KEYS = ("cowmix_p_range", "cowout_p_range", "cutmix_p_range", "cutout_p_range",
                "box_area_range")


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
    if isinstance(config[key], bool) or not isinstance(config[key], int):
      raise ValueError(f"config.{key}={config[key]!r} must be a whole number of images"
                       + (" (resolve_batches sets auto ones)"
                          if config_base.is_auto(config[key]) else ""))
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


INF = float("inf")
# Every numeric setting and the values it may take: (low, high, whether low itself is
# excluded). Keys a config does not have are skipped.
RANGES: dict[str, tuple[float, float, bool]] = {
    "seed": (0, 2**31 - 1, False),
    "num_epochs": (0, INF, False),
    "learning_rate": (0, INF, True),
    "weight_decay": (0, INF, False),
    "cons_weight": (0, INF, False),
    "teacher_alpha": (0, 1, False),
    "confidence.threshold": (0, 1, False),
    "pseudo_label_threshold": (0, 1, False),
    "mask.mix_probability": (0, 1, False),
    "log_every": (0, INF, False),
    "image_every": (0, INF, False),
    "checkpoint_every": (0, INF, False),
    "keep_checkpoints": (1, INF, False),
    "eval_every": (0, INF, False),
    "eval_every_epochs": (0, INF, False),
    "prefetch_batches": (0, 64, False),
    "mask.ict_alpha": (0, INF, True),
    "mask.cow_canvas_margin_sigmas": (0, INF, False),
    "model.pretrained_lr_multiplier": (0, INF, False),
    "data.downscale": (1, INF, False),
    "data.augment.scale_step": (0, INF, False),
    "data.augment.rotation_degrees": (0, 180, False),
    "data.augment.brightness_std": (0, INF, False),
    "data.augment.contrast_log_std": (0, INF, False),
    "aug_consistency.rotation_degrees": (0, 180, False),
    "aug_consistency.translate_pixels": (0, INF, False),
    "aug_consistency.brightness_std": (0, INF, False),
    "aug_consistency.contrast_log_std": (0, INF, False),
}


def _check_range(key: str, value, low: float, high: float, low_open: bool = False) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"config.{key}={value!r} must be a number")
  if not ((low < value) if low_open else (low <= value)) or not value <= high:
    raise ValueError(f"config.{key}={value} must be in {'(' if low_open else '['}"
                     f"{low:g}, {high:g}]")


def _lookup(config: ml_collections.ConfigDict, key: str):
  """``config`` at the dotted ``key``, or None when some part is absent."""
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return None
    node = node[part]
  return node


def _range_checks(config: ml_collections.ConfigDict) -> list[Callable[[], object]]:
  checks = [functools.partial(_check_range, key, _lookup(config, key), *bounds)
            for key, bounds in RANGES.items()
            if _lookup(config, key) is not None
            and not config_base.is_auto(_lookup(config, key))]  # auto: resolved with data
  if config.num_epochs == 0:  # num_epochs > 0 sets num_train_steps
    checks.append(lambda: _check_range("num_train_steps", config.num_train_steps, 1, INF))
  checks.append(lambda: _check_num_labelled(config.data.num_labelled))
  return checks


def _check_num_labelled(value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value >= 1):
    raise ValueError(f"config.data.num_labelled={value!r} must be -1 (every image) or a "
                     f"number of images >= 1")


def _check_p_ranges(mask: ml_collections.ConfigDict) -> None:
  for key in P_RANGE_KEYS:
    if key not in mask:
      continue
    try:
      masks.check_p_range(tuple(mask[key]))
    except (ValueError, TypeError) as error:
      raise ValueError(f"config.mask.{key}={mask[key]!r}: {error}") from None


def _check_aspect_range(mask: ml_collections.ConfigDict) -> None:
  aspect = mask.get("box_aspect_range")
  if aspect is not None and not (len(aspect) == 2 and 0 < aspect[0] <= aspect[1]):
    raise ValueError(f"config.mask.box_aspect_range={aspect!r}: expected (low, high) "
                     f"height / width ratios with 0 < low <= high")


def cow_sigma_range(mask: ml_collections.ConfigDict) -> tuple[float, float] | None:
  """``config.mask.cow_sigma_range`` as ``(smallest, largest)``; None for ``auto``."""
  return data_lib.pair_setting(mask.cow_sigma_range, "mask.cow_sigma_range",
                               "(smallest, largest) sigma in pixels", float)


def _check_sigma_range(mask: ml_collections.ConfigDict) -> None:
  """A given range must be ordered; ``auto`` is resolved (and checked) with the data."""
  sigmas = cow_sigma_range(mask)
  if sigmas is None:
    return
  low, high = sigmas
  if high < low:
    raise ValueError(f"config.mask.cow_sigma_range={sigmas}: the smallest sigma is "
                     f"larger than the largest")


def _check_model_runs_the_method(config: ml_collections.ConfigDict) -> None:
  try:
    model = models.build_model(config.model, 2)
  except ValueError:  # a bad model setting has its own check
    return
  steps.check_feature_perturbation(config, model)


def _check_normalisation(model: ml_collections.ConfigDict) -> None:
  name = models.input_normalisation(model)
  if name not in NORMALISATIONS:
    raise ValueError(f"config.model.normalisation={name!r}: choose one of "
                     f"{sorted(NORMALISATIONS) + ['auto']}")


def suggested_weights(model: ml_collections.ConfigDict) -> str:
  """The named weights that fit the model's encoder, or '' when none does."""
  if model.name == "deeplab_v2":
    return ""
  if model.encoder == "efficientnet_lite":
    return f"efficientnet_{model.encoder_variant}"
  name = f"torchvision_resnet{model.depth}"
  return name if name in pretrained_lib.DOWNLOADABLE and model.width == 64 else ""


DEEPLAB_V2_WEIGHTS = (
    "DeepLab v2 starts from the COCO-pretrained ResNet-101 of Hung et al. "
    "(resnet101COCO-41f33a49.pth, on an academic server with no stable, hash-checked "
    "release: http://vllab1.ucmerced.edu/~whung/adv-semi-seg/resnet101COCO-41f33a49.pth): "
    "python -m cowmix_jax.models.convert "
    "--layout=deeplab_v2 --input=resnet101COCO-41f33a49.pth "
    "--output=deeplab_v2_coco.msgpack (add --drop_head unless the dataset has Pascal's 21 "
    "classes), then --config.model.pretrained=deeplab_v2_coco.msgpack")


def _check_pretrained(model: ml_collections.ConfigDict) -> None:
  """Frozen BatchNorm needs pretrained statistics: with random initialisation it is the
  identity (mean 0, variance 1), so such a run is refused, with the fix. Named weights
  must fit the encoder they are loaded into."""
  weights = model.pretrained
  if model.freeze_bn and weights in ("", pretrained_lib.NO_WEIGHTS):
    suggestion = suggested_weights(model)
    fix = (DEEPLAB_V2_WEIGHTS if model.name == "deeplab_v2" else
           f"--config.model.pretrained={suggestion} (downloaded once; offline see "
           f"docs/MODELS.md, \"Pretrained weights\")" if suggestion else
           "--config.model.pretrained=FILE.msgpack (python -m cowmix_jax.models.convert)")
    raise ValueError(
        f"config.model.freeze_bn=True with config.model.pretrained={weights!r}: frozen "
        f"BatchNorm keeps its initial statistics, which for a random encoder make it the "
        f"identity. Give the weights: {fix}; or, to train from random initialisation on "
        f"purpose: --config.model.freeze_bn=False --config.model.pretrained=none")
  spec = pretrained_lib.DOWNLOADABLE.get(weights)
  if spec and (model.encoder != "resnet" or model.depth != spec.depth or model.width != 64):
    fits = suggested_weights(model)
    raise ValueError(f"config.model.pretrained={weights} holds a ResNet-{spec.depth} of width "
                     f"64; the model's encoder is {model.encoder} (depth {model.depth}, width "
                     f"{model.width})"
                     + (f": use --config.model.pretrained={fits}" if fits else ""))
  packaged = pretrained_lib.PACKAGED.get(weights)
  if packaged and (model.encoder != "efficientnet_lite"
                   or f"efficientnet_{model.encoder_variant}" != weights):
    raise ValueError(f"config.model.pretrained={weights} holds an EfficientNet-"
                     f"{weights.split('_')[-1].capitalize()}; the model's encoder is "
                     f"{model.encoder} ({model.encoder_variant})")


def _checks(config: ml_collections.ConfigDict, device_count: int,
            process_count: int) -> list[Callable[[], object]]:
  """Each check raises ValueError naming its key."""
  return [
      lambda: mixing.make_perturbation(config),
      *_strong_view_checks(config),
      lambda: steps.pseudo_label_source(config),
      lambda: _check_teacher_moves(config),
      lambda: _check_model_runs_the_method(config),
      lambda: optimizers.OPTIMIZERS.get(config.optimizer),
      lambda: optimizers.LR_SCHEDULES.get(config.lr_schedule),
      lambda: losses.CONSISTENCY_LOSSES.get(config.consistency_loss),
      lambda: losses.CONFIDENCE_MODES.get(config.confidence.mode),
      *_range_checks(config),
      lambda: _check_p_ranges(config.mask),
      lambda: _check_aspect_range(config.mask),
      lambda: _check_sigma_range(config.mask),
      lambda: models.MODELS.get(config.model.name),
      lambda: models.check_encoder(config.model),
      lambda: models.compute_dtype(config.model),
      lambda: steps.check_bn_running_stats(config.model),
      lambda: _check_normalisation(config.model),
      lambda: _check_pretrained(config.model),
      lambda: data_lib.base.DATASETS.get(config.data.name),
      lambda: data_lib.canvas_setting(config.data.eval_canvas),
      lambda: mesh_size(config, device_count, process_count),
  ]


def _check_teacher_moves(config: ml_collections.ConfigDict) -> None:
  """A teacher whose EMA decay is fixed at 1 never leaves its initial weights, yet it
  is the network evaluated, kept as best and reported. UniMatch V2's warm-up (fixmatch
  and unimatch with config.teacher=ema) moves it whatever the cap."""
  if config.teacher_alpha != 1 or steps.teacher_warms_up(config):
    return
  raise ValueError("config.teacher_alpha=1 keeps the teacher (the network evaluated and "
                   "saved) at its initial weights for the whole run: choose a decay below "
                   "1 (the paper's 0.99)")


def _strong_view_checks(config: ml_collections.ConfigDict) -> list[Callable[[], object]]:
  """The strong-view methods' settings each on its own: building the perturbation stops
  at its first bad value, which would hide the others until the next try."""
  if config.method not in method_keys.STRONG_VIEW_METHODS:
    return []
  return [lambda: mixing.strong_view_mask(config),
          lambda: strong_augment.check_blur_sigma_range(config.strong_blur_sigma_range)]


# "auto" batches (configs/folder.py): (labelled, unlabelled) per step on a CPU and on
# accelerators.
AUTO_BATCHES = {"cpu": (2, 2), "accelerator": (4, 4)}


# Whole-number settings that a config may leave "auto" (a string field, so that
# --config.KEY=4 arrives as "4").
AUTO_NUMBER_KEYS = ("batch_size", "unlabelled_batch_size", "data.downscale")


def numbers_given_to_auto_fields(config: ml_collections.ConfigDict) -> None:
  """Turns ``"4"`` given on the command line to a field whose default is ``auto`` into
  the number 4."""
  for key in AUTO_NUMBER_KEYS:
    *parents, leaf = key.split(".")
    parent = _lookup(config, ".".join(parents)) if parents else config
    if parent is not None and leaf in parent:
      config_base.whole_number_field(parent, leaf)


def resolve_batches(config: ml_collections.ConfigDict, backend: str) -> None:
  """Sets ``batch_size`` and ``unlabelled_batch_size`` given as ``auto``: AUTO_BATCHES
  for the backend (smaller on a CPU, where every image costs its own time); logged."""
  chosen = AUTO_BATCHES["cpu" if backend == "cpu" else "accelerator"]
  for key, value in zip(("batch_size", "unlabelled_batch_size"), chosen):
    if config_base.is_auto(config[key]):
      config_base.replace_field(config, key, value)
      logging.info("config.%s=auto: %d on %s (--config.%s=N to choose).", key, value,
                   "the CPU" if backend == "cpu" else backend, key)


def validate_config(config: ml_collections.ConfigDict, device_count: int,
                    process_count: int = 1) -> None:
  """Raises one ValueError that names every setting that cannot work (one line each),
  before any data is read or any model built."""
  problems = []
  for check in _checks(config, device_count, process_count):
    try:
      check()
    except ValueError as error:
      if str(error) not in problems:  # two checks may meet one bad value
        problems.append(str(error))
  if len(problems) == 1:
    raise ConfigError(problems[0])
  if problems:
    raise ConfigError(f"{len(problems)} settings cannot work:\n" +
                     "\n".join(f"  - {problem}" for problem in problems))


# Step counts that a positive count in epochs replaces (resolve_training_length).
REPLACED_BY_EPOCHS = {"num_train_steps": "num_epochs", "eval_every": "eval_every_epochs"}


def unread_override_problems(config: ml_collections.ConfigDict,
                             overridden: Iterable[str]) -> list[str]:
  """One line for each overridden key that ``config.method`` does not read (a typo in
  ``--config.mask.mix`` for CowMix, ``--config.cons_weight`` for FixMatch): such an
  override would change nothing, silently. An unknown method is left to its own check."""
  method = config.get("method")
  if method not in method_keys.METHODS:
    return []
  mix, complementary = config.mask.get("mix"), bool(config.mask.get("complementary"))

  def counterpart(key: str) -> str:
    other = method_keys.COUNTERPARTS.get(key)
    if other and method_keys.reads_key(other, method, mix, complementary):
      return f"; {method} reads config.{other}"
    return ""

  return [f"--config.{key}={_lookup(config, key)!r} has no effect: config.method={method} "
          f"does not read it (read by {method_keys.readers_text(key)}){counterpart(key)}"
          for key in sorted(overridden)
          if not method_keys.reads_key(key, method, mix, complementary)]


def check_overrides_take_effect(config: ml_collections.ConfigDict,
                                overridden: Iterable[str]) -> None:
  """Raises ConfigError for a command-line override the config would ignore: a step
  count (``num_train_steps``, ``eval_every``) while its count in epochs is positive and
  was not overridden to 0 (the epochs would win and the override do nothing), or a
  setting the run's method does not read (``unread_override_problems``)."""
  overridden = set(overridden)
  problems = [
      f"--config.{steps_key}={config[steps_key]} has no effect: config.{epochs_key}="
      f"{config[epochs_key]:g} sets the length in epochs and wins; add "
      f"--config.{epochs_key}=0 to count in steps (or set --config.{epochs_key})"
      for steps_key, epochs_key in REPLACED_BY_EPOCHS.items()
      if steps_key in overridden and config[epochs_key] > 0]
  problems += unread_override_problems(config, overridden)
  if problems:
    raise ConfigError("\n".join(problems))


def check_cow_sigma(config: ml_collections.ConfigDict) -> None:
  """Cow masks (cowmix, cowout) whose largest sigma exceeds the crop's shorter side
  would be almost uniform: the perturbation would vanish without a word."""
  if mixing.make_perturbation(config).mask_kind != "cow":
    return
  sigmas = cow_sigma_range(config.mask)
  sigma = max(sigmas)
  crop = tuple(config.data.augment.crop_size)  # resolved to a tuple with the data
  if sigma > min(crop):
    scale = min(crop) / 360  # the paper's CamVid: sigma 4..16 for 480x360 images
    suggestion = (round(4 * scale, 2), round(16 * scale, 2))
    raise ValueError(
        f"config.mask.cow_sigma_range={sigmas}: sigma {sigma:g} "
        f"is larger than the crop's shorter side (config.data.augment.crop_size={crop}, "
        f"pixels after config.data.downscale), so cow masks would be nearly uniform. The "
        f"paper uses 4..16 for 480x360 images; for this crop, e.g. "
        f"--config.mask.cow_sigma_range='{suggestion}'.")


def check_blur_sigma(config: ml_collections.ConfigDict) -> None:
  """Strong views (fixmatch, unimatch) blurred by a kernel wider than the crop's shorter
  side would be nearly uniform: the augmentation would wipe out the image without a
  word."""
  views = steps.strong_views_of(config)
  if views is None:
    return
  sigmas = views.blur_sigma  # checked when the views were built
  kernel = strong_augment.blur_kernel_size(sigmas[1])
  crop = tuple(config.data.augment.crop_size)  # resolved to a tuple with the data
  if kernel > min(crop):
    raise ValueError(
        f"config.strong_blur_sigma_range={sigmas}: the blur kernel for sigma {sigmas[1]:g} "
        f"({kernel} pixels, 3 sigma each side) is wider than the crop's shorter side "
        f"(config.data.augment.crop_size={crop}, pixels after config.data.downscale), so "
        f"blurred views would be nearly uniform. UniMatch blurs its 321-801-pixel crops "
        f"with sigmas 0.1..2; the CPU-scale configs shrink that with their images, e.g. "
        f"--config.strong_blur_sigma_range='(0.025, 0.5)' at a quarter of the size.")


def check_against_data(config: ml_collections.ConfigDict, builder) -> None:
  """The settings that depend on the prepared dataset, checked before any work: the
  splits exist, the evaluation canvas holds every evaluation image, the labelled subset
  fits the training split (a labelled-ids file is read and every id found in it), cow
  masks and the strong views' blur are not wider than the crops (``auto`` canvas, crop
  and sigmas resolved here).
  Raises ConfigError (a ValueError) or the data's own error naming the file."""
  try:
    _check_against_data(config, builder)
  except ValueError as error:  # a setting that does not fit the data: a usage error
    if isinstance(error, ConfigError):
      raise
    raise ConfigError(str(error)) from error


def _check_against_data(config: ml_collections.ConfigDict, builder) -> None:
  present = sorted(builder.info.splits)
  for key in ("train_split", "eval_split"):
    if config.data[key] not in builder.info.splits:
      evaluable = [split for split in present if split not in ("train", "unlabelled")]
      fix = (f"; choose one with --config.data.{key}=..." if key == "train_split" else
             f"; evaluate on another with --config.data.eval_split={evaluable[0]}"
             if evaluable else
             "; a folder dataset needs labelled images in validation/ (or test/) to "
             "evaluate on: add validation/images/ and validation/labels/")
      raise ValueError(f"config.data.{key}={config.data[key]!r}: the dataset "
                       f"{config.data.name!r} has the splits {present}{fix}")
  data_lib.resolve_data_settings(config, builder)
  check_cow_sigma(config)
  check_blur_sigma(config)
  if config.data.labelled_ids_file:  # read and matched against the training split
    data_lib.choose_labelled_ids(builder, config.data, config.seed)
  else:
    splits.check_num_labelled(
        config.data.num_labelled, builder.info.splits[config.data.train_split].num_examples)


def resolve_training_length(config: ml_collections.ConfigDict, num_train_examples: int) -> None:
  """Sets ``config.num_train_steps`` (and ``config.eval_every``) from
  ``config.num_epochs`` (and ``config.eval_every_epochs``) when those are positive.

  An epoch is one pass over the ``num_train_examples`` images of the training split at
  ``config.batch_size`` labelled images per step, as in the paper (CamVid: 367 steps at
  batch 1, so 300 epochs are 110,100 steps), whatever the number of labelled images.
  Lengths round to the nearest step (at least 1).
  """
  steps_per_epoch = num_train_examples / config.batch_size
  epochs = config.num_epochs
  if epochs < 0:
    raise ValueError(f"config.num_epochs={epochs} must be >= 0 (0: use num_train_steps)")
  if epochs > 0:
    config.num_train_steps = max(1, int(round(epochs * steps_per_epoch)))
  eval_epochs = config.eval_every_epochs
  if eval_epochs > 0:
    config.eval_every = max(1, int(round(eval_epochs * steps_per_epoch)))
  if epochs > 0 or eval_epochs > 0:
    logging.info("%s epochs of %d images at batch %d: %d steps, evaluating every %s steps.",
                 f"{epochs:g}" if epochs else "-", num_train_examples, config.batch_size,
                 config.num_train_steps, config.eval_every or "(end only)")
