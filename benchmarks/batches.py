"""A random training batch of a config's shapes, for the timing scripts."""

from __future__ import annotations

import numpy as np


def random_batch(config, seed: int = 0, num_classes: int = 11) -> dict[str, np.ndarray]:
  """NHWC numpy ``image [B, H, W, 3]``, ``label [B, H, W]``, ``unlabelled_image
  [Bu, H, W, 3]`` and ``unlabelled_valid [Bu, H, W]`` (ones) of the config's batch sizes
  and crop, images standard normal, labels uniform over ``num_classes``."""
  rng = np.random.default_rng(seed)
  height, width = config.data.augment.crop_size
  labelled, unlabelled = config.batch_size, config.unlabelled_batch_size
  return {"image": rng.standard_normal((labelled, height, width, 3), np.float32),
          "label": rng.integers(0, num_classes, (labelled, height, width), np.int32),
          "unlabelled_image": rng.standard_normal((unlabelled, height, width, 3), np.float32),
          "unlabelled_valid": np.ones((unlabelled, height, width), np.float32)}
