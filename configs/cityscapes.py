"""Cityscapes at half resolution (1024x512), the paper's Table 2 setting with U-Net.

python -m cowmix_jax.main --config=configs/cityscapes.py --workdir=DIR \\
    --config.data.manual_dir=/path/to/cityscapes [--config.data.num_labelled=372]

The dataset directory comes from config.data.manual_dir, else $COWMIX_CITYSCAPES_DIR.
`--config=configs/cityscapes.py:deeplab_v2` selects DeepLab v2 (batch 2 of full images,
learning rate 1e-5). Labels are reduced by 2x2 majority vote
(builder_config=half_majority; half_nearest and full are the alternatives, see
cowmix_jax/data/cityscapes.py).
"""

from cowmix_jax.config_base import get_base_config, get_data_config, set_paper_model


def get_config(model: str = "unet"):
  config = get_base_config()
  config.data = get_data_config(
      "cityscapes", builder_config="half_majority", num_labelled=372,
      eval_canvas=(512, 1024), augment=dict(crop_size=(512, 1024), hflip=True))
  config.method = "cowmix"
  config.batch_size = 1  # paper: U-Net, batch 1, 100k iterations
  config.unlabelled_batch_size = 2  # mixing pairs two unlabelled images
  config.num_devices = 1
  config.num_train_steps = 100_000
  config.mask.cow_sigma_range = (8.0, 32.0)
  set_paper_model(config, model, "configs/cityscapes.py")
  if model == "deeplab_v2":
    config.batch_size = 2  # paper: DeepLab, batch 2 of full images
    config.unlabelled_batch_size = 2
  config.eval_batch_size = 1
  config.eval_every = 10_000
  config.log_every = 200
  return config
