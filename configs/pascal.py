"""Pascal VOC 2012 + SBD (aug), the paper's Table 3 setting with U-Net.

python -m cowmix_jax.main --config=configs/pascal.py --workdir=DIR \\
    --config.data.manual_dir=/path/to/VOCdevkit/VOC2012 [--config.data.num_labelled=100]

The dataset directory comes from config.data.manual_dir, else $COWMIX_VOC_DIR.
`--config=configs/pascal.py:deeplab_v2` selects DeepLab v2 (ResNet-101, output stride 8,
Caffe-style 0-255 BGR input, learning rate 1e-5, paper D.3.2).
321x321 crops, random scale 0.5 to 1.5 in steps of 0.1 (Hung et al.), flips, batch 10.

`--config=configs/pascal.py:unimatch` is UniMatch V1's Pascal setting instead (method
unimatch with CutMix boxes; `--config.mask.mix=cow` for cow masks): DeepLab v3+ on
torchvision's ImageNet ResNet-101 at output stride 16, BatchNorm trained, 321x321 crops
at a random scale 0.5-2, batch 8 + 8 unlabelled, SGD (momentum 0.9, weight decay 1e-4)
at 0.001 for the backbone and 0.01 for the head with poly decay, 80 of UniMatch's
epochs (passes over the unlabelled images) for 92 labels, evaluated each epoch.
"""

from cowmix_jax.config_base import get_base_config, get_data_config, set_paper_model

MODELS = ("unet", "deeplab_v2", "unimatch")
VOC_AUG_TRAIN_IMAGES = 10_582
UNIMATCH_EPOCHS = 80


def unimatch_epoch_steps(num_labelled: int, gpus: int = 4, per_gpu: int = 2) -> int:
  """Steps in one of UniMatch's epochs: a pass over its unlabelled images (the train
  split without the labelled ones) on 4 GPUs of 2 images, each GPU's sampler padding
  its share to ceil(N / 4) and keeping whole batches: 1,311 for 92 labels."""
  unlabelled = VOC_AUG_TRAIN_IMAGES - num_labelled
  return -(-unlabelled // gpus) // per_gpu


def set_unimatch_v1(config) -> None:
  """UniMatch V1's Pascal training (its configs/pascal.yaml and unimatch.py)."""
  config.method = "unimatch"
  config.data.num_labelled = 92
  config.data.augment.scale_range, config.data.augment.scale_step = (0.5, 2.0), 0.0
  config.batch_size = config.unlabelled_batch_size = config.eval_batch_size = 8
  config.model.name, config.model.depth, config.model.output_stride = "deeplab_v3plus", 101, 16
  config.model.freeze_bn = False
  config.model.normalisation = "imagenet"
  config.model.pretrained = "torchvision_resnet101"
  config.optimizer, config.lr_schedule, config.weight_decay = "sgd", "poly", 1e-4
  config.learning_rate = 0.01  # the head's; the backbone learns at 0.1x: 0.001
  config.model.pretrained_lr_multiplier = 0.1
  config.eval_every = unimatch_epoch_steps(config.data.num_labelled)  # each epoch
  config.num_train_steps = UNIMATCH_EPOCHS * config.eval_every


def get_config(model: str = "unet"):
  if model not in MODELS:
    raise ValueError(f"configs/pascal.py:{model}: choose {', '.join(MODELS[:-1])} or "
                     f"{MODELS[-1]}")
  config = get_base_config()
  config.data = get_data_config(
      "pascal", num_labelled=100, eval_canvas=(512, 512),
      augment=dict(crop_size=(321, 321), scale_range=(0.5, 1.5), scale_step=0.1, hflip=True))
  config.method = "cowmix"
  config.batch_size = 10
  config.unlabelled_batch_size = 10
  config.num_train_steps = 40_000
  config.mask.cow_sigma_range = (8.0, 32.0)
  config.eval_batch_size = 10
  config.eval_every = 5_000
  config.log_every = 200
  if model == "unimatch":
    set_unimatch_v1(config)
  else:
    set_paper_model(config, model, "configs/pascal.py")
  return config
