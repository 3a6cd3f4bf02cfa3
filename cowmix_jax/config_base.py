"""Settings shared by every config: the method and its hyper-parameters (paper values)."""

import math

import ml_collections

AUTO = "auto"


def replace_field(parent: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets ``parent[key]`` even when ``value``'s type differs from the field's (an
  ``"auto"`` string replaced by the tuple it resolves to, or the reverse)."""
  with parent.unlocked():
    if key in parent:
      del parent[key]
    parent[key] = value


def whole_number_field(parent: ml_collections.ConfigDict, key: str) -> None:
  """A field that may be ``"auto"`` holds a string, so ``--config.KEY=4`` arrives as
  ``"4"``: such a string becomes the int it spells (anything else but ``auto`` is left
  for the checks to name)."""
  value = parent[key]
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    replace_field(parent, key, int(value))


def is_auto(value) -> bool:
  """``"auto"``, or ``("auto",)``: what the command line makes of ``auto`` given to a
  tuple field."""
  return value in (AUTO, (AUTO,))


# The keys a dataset has beyond the common ones, with their defaults.
DATASET_SETTINGS = {
    # The procedural dataset: its images follow from these (see data/synthetic.py).
    "synthetic": dict(seed=0, task="shapes", image_size=64, num_train=512,
                      num_validation=128),
}


def get_data_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """``config.data``: which dataset, where it is, the labelled subset and augmentation.

  Keys:
    name: camvid, cityscapes, pascal, folder or synthetic.
    manual_dir: the dataset's directory ('' = the dataset's environment variable).
    data_dir: where prepared datasets go ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets).
    builder_config: a builder variant (Cityscapes: half_majority, half_nearest, full).
    num_labelled: labelled images, drawn by seed (-1 = all).
    labelled_ids_file: a .txt or .json list of image ids; overrides num_labelled.
    subset_seed: the seed of the labelled draw (-1 = config.seed).
    class_balanced: draw the subset so every class is shown as evenly as possible.
    eval_canvas: (H, W) every evaluation image is padded to (label 255), or "auto" (the
      default): the largest image of the evaluation split. A canvas too small for an
      image stops the run before training.
    downscale: shrink every image by this whole factor before anything else (training
      crops are then in shrunk pixels); evaluation upsamples the logits to the labels'
      full resolution, so mIoU is always measured at the dataset's resolution.
    augment: see cowmix_jax.data.pipeline.Augmentation.
    and the dataset's own keys (DATASET_SETTINGS).
  """
  data = ml_collections.ConfigDict()
  data.name = name
  data.manual_dir = ""
  data.data_dir = ""
  data.builder_config = ""
  data.train_split = "train"
  data.eval_split = "validation"
  data.num_labelled = -1
  data.labelled_ids_file = ""
  data.subset_seed = -1
  data.class_balanced = False
  # (H, W), or "auto": the largest evaluation image (rounded up to a multiple of
  # downscale), found when the run starts.
  data.eval_canvas = overrides.pop("eval_canvas", "auto")
  data.downscale = 1
  data.augment = ml_collections.ConfigDict(dict(
      crop_size=(321, 321), scale_range=(1.0, 1.0), scale_step=0.0, hflip=True,
      rotation_degrees=0.0, brightness_std=0.0, contrast_log_std=0.0))
  data.augment.update(overrides.pop("augment", {}))
  data.update(DATASET_SETTINGS.get(name, {}))
  data.update(overrides)
  return data


def get_model_config(**overrides) -> ml_collections.ConfigDict:
  """``config.model``: the network, its encoder, BatchNorm, dtype and pretrained weights
  (the paper's U-Net on a ResNet-50 unless overridden)."""
  model = ml_collections.ConfigDict()
  model.name = "unet"
  model.depth = 50
  model.width = 64
  model.freeze_bn = False
  # Which student passes update the running BatchNorm statistics (and so, through the
  # moving average, the teacher's): "both_passes" (the labelled pass, then the pass on
  # perturbed unlabelled images) or "labelled_pass" (perturbed images are normalised by
  # their own batch statistics but never written into the running ones). No effect with
  # freeze_bn.
  model.bn_running_stats = "both_passes"
  model.decoder_widths = (192, 128, 96, 64, 48, 32)  # U-Net only
  # DeepLab v2 only: reproduce the authors' ASPP that sums two of its four branches.
  model.aspp_two_branch_bug = False
  model.output_stride = 8  # DeepLab v3+ only: 8 or 16
  # The encoder: resnet (model.depth and width) or efficientnet_lite
  # (model.encoder_variant: lite0, lite1 or lite2; widths fixed). U-Net only.
  model.encoder = "resnet"
  model.encoder_variant = "lite0"
  # Input normalisation the backbone was trained with: imagenet, caffe, efficientnet_lite,
  # grey, or auto (chosen by the encoder: imagenet for ResNets, efficientnet_lite for
  # EfficientNet-Lite).
  model.normalisation = "auto"
  # Computation dtype: float32, or bfloat16 for mixed precision on GPUs and TPUs
  # (parameters and optimiser state stay float32). CPUs gain nothing from bfloat16.
  model.dtype = "float32"
  # Rematerialise the encoder's residual blocks in the backward pass (jax.checkpoint,
  # nothing_saveable: only block inputs are kept): less memory for about one more
  # encoder forward pass per step; same results (docs/PERFORMANCE.md).
  model.remat = False
  # The encoder's initial weights: the name of weights found by this package
  # (torchvision_resnet50, torchvision_resnet101: downloaded once; efficientnet_lite0,
  # efficientnet_lite1, efficientnet_lite2: shipped by a package; converted once into the
  # cache, see models/pretrained.py), the path of a .msgpack written by
  # python -m cowmix_jax.models.convert, or "none" (random initialisation on purpose; ""
  # is the same without frozen BatchNorm). They load into the encoder (or all of DeepLab
  # v2) and learn at pretrained_lr_multiplier x the learning rate. Frozen BatchNorm needs
  # them: the run stops before any work otherwise.
  model.pretrained = ""
  model.pretrained_lr_multiplier = 0.1

  unknown = sorted(set(overrides) - set(model))
  if unknown:
    raise KeyError(f"config.model has no key {unknown}: it has {sorted(model)}")
  model.update(overrides)
  return model


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # One of: supervised, aug, ict, cutout, cutmix, cowout, cowmix (mean teacher, the
  # paper's), fixmatch, unimatch (hard pseudo-labels on strong views, docs/METHODS.md).
  config.method = "cowmix"

  config.num_train_steps = 1000
  # > 0: the length in epochs instead (passes over the training split at batch_size
  # labelled images per step, as the paper counts them); sets num_train_steps.
  config.num_epochs = 0.0
  config.batch_size = 8  # labelled images per step (global)
  config.unlabelled_batch_size = 8  # unlabelled images per step (global)
  config.learning_rate = 1e-4
  # constant (the paper), cosine (decays to 0 at the last step) or poly (UniMatch's:
  # (1 - step / num_train_steps) ** 0.9); cowmix_jax/optimizers.py.
  config.lr_schedule = "constant"
  config.optimizer = "adam"  # the paper's; or sgd (momentum 0.9, UniMatch's)
  # Added to each gradient times the parameter before the optimiser (PyTorch's
  # weight_decay, for adam and sgd alike; UniMatch: 1e-4). 0: none (the paper).
  config.weight_decay = 0.0
  config.cons_weight = 10.0
  config.teacher_alpha = 0.99
  # Where fixmatch and unimatch take their pseudo-labels: "student" (UniMatch V1: the
  # student's own prediction on the weak view, no gradient), "ema" (UniMatch V2: the
  # teacher, a moving average with decay min(1 - 1/(step + 1), teacher_alpha)), or
  # "auto" (student for those two; the mean-teacher methods always learn from the
  # teacher, with decay teacher_alpha, and accept only auto or ema).
  config.teacher = "auto"
  # fixmatch, unimatch: pixels whose pseudo-label has at least this probability count.
  config.pseudo_label_threshold = 0.95
  # fixmatch, unimatch: the strong views' Gaussian blur sigma ~ U(low, high), in pixels
  # at the training resolution (UniMatch's 0.1-2; the CPU-scale configs divide it by
  # their downscale, as the cow masks' sigmas).
  config.strong_blur_sigma_range = (0.1, 2.0)
  config.consistency_loss = "mse_prob"  # or kl, mse_logit, hard_ce (CE to the argmax)
  config.confidence = ml_collections.ConfigDict()
  config.confidence.threshold = 0.97
  config.confidence.mode = "batch"  # or pixel, none

  config.mask = ml_collections.ConfigDict()
  config.mask.cow_sigma_range = (4.0, 16.0)  # pixels at the training resolution
  config.mask.exact_proportion = False
  # Cow masks are drawn on a canvas this many sigma_max larger than the image and
  # cropped, so that they do not wrap around the borders; 0: a canvas the image's size
  # (periodic masks, the behaviour before this key existed).
  config.mask.cow_canvas_margin_sigmas = 6.0
  config.mask.cowmix_p_range = (0.5, 0.5)
  config.mask.cowout_p_range = (0.0, 1.0)
  config.mask.cutmix_p_range = (0.5, 0.5)
  config.mask.cutout_p_range = (0.0, 1.0)
  config.mask.ict_alpha = 0.1
  # fixmatch, unimatch: how a strong view takes in a partner's strong view: "box"
  # (UniMatch's CutMix: area and aspect ratio drawn from the two ranges below) or "cow"
  # (cow masks with cow_sigma_range and cowmix_p_range); applied with mix_probability.
  config.mask.mix = "box"
  config.mask.mix_probability = 0.5
  config.mask.box_area_range = (0.02, 0.4)  # of the crop
  config.mask.box_aspect_range = (0.3, 1 / 0.3)  # height / width
  # unimatch: view 2 always mixed with 1 - (view 1's mask), view 1 always with its mask.
  config.mask.complementary = False

  config.aug_consistency = ml_collections.ConfigDict()
  config.aug_consistency.scale_range = (0.8, 1.25)
  config.aug_consistency.rotation_degrees = 15.0
  config.aug_consistency.translate_pixels = 4.0
  config.aug_consistency.flip = True
  config.aug_consistency.brightness_std = 0.1
  config.aug_consistency.contrast_log_std = math.log(1.1)

  config.model = get_model_config()

  config.log_every = 50
  config.image_every = 1000  # TensorBoard pictures of masks, inputs, targets; 0: never
  config.checkpoint_every = 1000  # 0: only at the end (and on SIGTERM)
  config.keep_checkpoints = 2  # latest checkpoints kept (the best by mIoU is kept apart)
  config.eval_every = 0  # 0: evaluate only at the end
  config.eval_every_epochs = 0.0  # > 0: sets eval_every from epochs, like num_epochs
  config.eval_batch_size = 16
  config.num_devices = -1  # -1: every visible device
  # Training batches transferred to the devices ahead of the step that uses them, so the
  # host's input work and the transfer overlap the step (0: none; the same batches).
  config.prefetch_batches = 2
  return config


def set_deeplab_v2(config: ml_collections.ConfigDict) -> None:
  """The paper's DeepLab v2 settings (appendix D.3.2): ResNet-101 at output stride 8,
  frozen BatchNorm, Caffe-style 0-255 BGR inputs with the mean subtracted, lr 1e-5;
  ``config.model.pretrained`` must name the converted COCO-pretrained file (Hung et
  al.'s resnet101COCO-41f33a49.pth, docs/MODELS.md)."""
  config.model.name = "deeplab_v2"
  config.model.depth = 101
  config.model.width = 64
  config.model.freeze_bn = True
  config.model.normalisation = "caffe"
  config.learning_rate = 1e-5


def set_paper_model(config: ml_collections.ConfigDict, model: str, config_file: str) -> None:
  """The paper's networks: ``unet`` (torchvision's ImageNet ResNet-50 encoder, downloaded
  once by name, frozen BatchNorm, lr 1e-4) or ``deeplab_v2`` (see set_deeplab_v2; its
  COCO-pretrained weights have no stable URL, so the run stops until
  ``config.model.pretrained`` names the converted file, with the command that makes
  it); ``config_file`` names the caller in the error for any other choice."""
  if model == "unet":
    config.model.name = "unet"
    config.model.depth = 50
    config.model.freeze_bn = True
    config.model.normalisation = "imagenet"
    config.model.pretrained = "torchvision_resnet50"
    config.learning_rate = 1e-4
  elif model == "deeplab_v2":
    set_deeplab_v2(config)
  else:
    raise ValueError(f"{config_file}:{model}: choose unet or deeplab_v2")


def get_camvid_cpu_config(downscale: int) -> ml_collections.ConfigDict:
  """CamVid's Table 1 setting (30 labels, CowMix) with images shrunk ``downscale``
  times and trained whole: cow-mask sigmas and the aug method's translation in shrunk
  pixels, evaluation on the full-resolution labels, one device, CPU-sized logging. The
  CPU-scale configs set the model, batch, length and learning rate. The strong views'
  blur sigmas (fixmatch, unimatch) shrink with the images too."""
  config = get_base_config()
  height, width = 360 // downscale, 480 // downscale
  config.data = get_data_config(
      "camvid", num_labelled=30, downscale=downscale, eval_canvas=(384, 480),
      augment=dict(crop_size=(-(-height // 32) * 32, width), hflip=True))
  config.method = "cowmix"
  config.num_devices = 1
  config.mask.cow_sigma_range = (4.0 / downscale, 16.0 / downscale)
  config.strong_blur_sigma_range = (0.1 / downscale, 2.0 / downscale)
  config.aug_consistency.translate_pixels = 4.0 / downscale
  config.model.name = "unet"
  config.eval_batch_size = 8
  config.checkpoint_every = 500
  config.log_every = 100
  config.image_every = 0
  return config


def _overlay(defaults: dict, values: dict) -> dict:
  """``defaults`` with ``values`` written over it, key by key at every depth."""
  merged = dict(defaults)
  for key, value in values.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = _overlay(merged[key], value)
    else:
      merged[key] = value
  return merged


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (a plain dict, e.g. a run's config.json) completed by today's
  defaults: a run saved before a key existed reads as if it had the key's default, which
  is the behaviour it was trained with."""
  defaults = get_base_config()
  defaults.data = get_data_config(saved.get("data", {}).get("name", ""))
  return ml_collections.ConfigDict(_overlay(defaults.to_dict(), saved))



def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config of ``spec``, written as on the command line: ``configs/pascal.py`` or
  ``configs/pascal.py:deeplab_v2`` (``get_config()`` or ``get_config("deeplab_v2")``
  of that file), for scripts that build configs without absl's config flags."""
  import importlib.util
  import os

  path, _, argument = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} (from {spec!r}) does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()
