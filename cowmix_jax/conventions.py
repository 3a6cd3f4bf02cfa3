"""Conventions shared by the data, the losses, the metrics and the reports, in a module
that imports nothing (reports and losses need them without TensorFlow)."""

# The label value of pixels that carry no loss and no score (void, padding, borders).
IGNORE_LABEL = 255

# Per-channel mean and std in 0..255 units, in the channel order the model expects.
NORMALISATIONS = {
    # torchvision / ImageNet: zero mean, unit variance (U-Net, DeepLab v3+).
    "imagenet": dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), bgr=False),
    # Caffe models (DeepLab v2 of Hung et al.): BGR, 0..255 with the mean subtracted.
    "caffe": dict(mean=(104.00698793, 116.66876762, 122.67891434), std=(1.0, 1.0, 1.0),
                  bgr=True),
    # EfficientNet-Lite's ImageNet weights (TensorFlow's lite builder): (pixel - 127) / 128.
    "efficientnet_lite": dict(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),
                              bgr=False),
    # The synthetic dataset: grey 0.5 -> 0, std 0.25.
    "grey": dict(mean=(127.5, 127.5, 127.5), std=(63.75, 63.75, 63.75), bgr=False),
}
