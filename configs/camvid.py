"""CamVid (SegNet split), the paper's Table 1 setting: U-Net ResNet-50, 30 labels, CowMix.

python -m cowmix_jax.main --config=configs/camvid.py --workdir=DIR \\
    --config.data.manual_dir=/data/CamVid [--config.method=supervised ...]

The dataset directory comes from config.data.manual_dir, else $COWMIX_CAMVID_DIR.
Images are 480x360; crops of 480x384 hold the whole image (the 24 rows of padding are
ignored by every loss), so the network sees full images as in the paper.
"""

from cowmix_jax.config_base import get_base_config, get_data_config, set_paper_model


def get_config():
  config = get_base_config()
  config.data = get_data_config(
      "camvid", num_labelled=30, eval_canvas=(384, 480),
      augment=dict(crop_size=(384, 480), hflip=True))
  config.method = "cowmix"
  config.batch_size = 1  # paper: batch 1 with frozen BatchNorm
  config.unlabelled_batch_size = 2  # mixing pairs two unlabelled images
  config.num_devices = 1
  # Table 1's caption: 300 epochs (110,100 steps at batch 1) for every method except
  # standard augmentation (50) and CutMix (100); cowmix_jax/experiments/ablation.py --epoch_scale=1
  # sets each method's length.
  config.num_epochs = 300
  config.mask.cow_sigma_range = (4.0, 16.0)
  set_paper_model(config, "unet", "configs/camvid.py")
  config.eval_batch_size = 1
  config.eval_every_epochs = 10
  config.log_every = 100
  return config
