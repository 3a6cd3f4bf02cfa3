"""Pascal VOC 2012 + SBD (aug), the paper's Table 3 setting with U-Net.

python -m cowmix_jax.main --config=configs/pascal.py --workdir=DIR \\
    --config.data.manual_dir=/path/to/VOCdevkit/VOC2012 [--config.data.num_labelled=100]

The dataset directory comes from config.data.manual_dir, else $COWMIX_VOC_DIR.
`--config=configs/pascal.py:deeplab_v2` selects DeepLab v2 (ResNet-101, output stride 8,
Caffe-style 0-255 BGR input, learning rate 1e-5, paper D.3.2).
321x321 crops, random scale 0.5 to 1.5 in steps of 0.1 (Hung et al.), flips, batch 10.
"""

from cowmix_jax.config_base import get_base_config, get_data_config, set_paper_model


def get_config(model: str = "unet"):
  config = get_base_config()
  config.data = get_data_config(
      "pascal", num_labelled=100, eval_canvas=(512, 512),
      augment=dict(crop_size=(321, 321), scale_range=(0.5, 1.5), scale_step=0.1, hflip=True))
  config.method = "cowmix"
  config.batch_size = 10
  config.unlabelled_batch_size = 10
  config.num_train_steps = 40_000
  config.mask.cow_sigma_range = (8.0, 32.0)
  set_paper_model(config, model, "configs/pascal.py")
  config.eval_batch_size = 10
  config.eval_every = 5_000
  config.log_every = 200
  return config
