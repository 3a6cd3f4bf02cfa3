"""Settings shared by every config: the method and its hyper-parameters (paper values)."""

import math

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # One of: supervised, aug, ict, cutout, cutmix, cowout, cowmix.
  config.method = "cowmix"

  config.num_train_steps = 1000
  config.batch_size = 8  # labelled images per step (global)
  config.unlabelled_batch_size = 8  # unlabelled images per step (global)
  config.learning_rate = 1e-4
  config.cons_weight = 10.0
  config.teacher_alpha = 0.99
  config.consistency_loss = "mse_prob"  # or kl, mse_logit
  config.confidence = ml_collections.ConfigDict()
  config.confidence.threshold = 0.97
  config.confidence.mode = "batch"  # or pixel, none

  config.mask = ml_collections.ConfigDict()
  config.mask.cow_sigma_range = (4.0, 16.0)  # pixels at the training resolution
  config.mask.exact_proportion = False
  config.mask.cowmix_p_range = (0.5, 0.5)
  config.mask.cowout_p_range = (0.0, 1.0)
  config.mask.cutmix_p_range = (0.5, 0.5)
  config.mask.cutout_p_range = (0.0, 1.0)
  config.mask.ict_alpha = 0.1

  config.aug_consistency = ml_collections.ConfigDict()
  config.aug_consistency.scale_range = (0.8, 1.25)
  config.aug_consistency.rotation_degrees = 15.0
  config.aug_consistency.translate_pixels = 4.0
  config.aug_consistency.flip = True
  config.aug_consistency.brightness_std = 0.1
  config.aug_consistency.contrast_log_std = math.log(1.1)

  config.model = ml_collections.ConfigDict()
  config.model.name = "unet"
  config.model.depth = 50
  config.model.width = 64
  config.model.freeze_bn = False
  config.model.decoder_widths = (192, 128, 96, 64, 48, 32)

  config.log_every = 50
  config.eval_every = 0  # 0: evaluate only at the end
  config.eval_batch_size = 16
  config.num_devices = -1  # -1: every visible device
  return config
