"""Tests of cowmix_jax/data: the synthetic dataset, labelled subsets, batching."""

import numpy as np
import pytest

from cowmix_jax import data as data_lib
from cowmix_jax.data import synthetic


def test_synthetic_is_deterministic_by_seed_and_index():
  a_image, a_label = synthetic.render_example(0, "train", 5, 64)
  b_image, b_label = synthetic.render_example(0, "train", 5, 64)
  np.testing.assert_array_equal(a_image, b_image)
  np.testing.assert_array_equal(a_label, b_label)
  c_image, _ = synthetic.render_example(1, "train", 5, 64)
  d_image, _ = synthetic.render_example(0, "validation", 5, 64)
  assert np.mean(a_image != c_image) > 0.5 and np.mean(a_image != d_image) > 0.5
  assert a_image.dtype == np.uint8 and a_image.shape == (64, 64, 3)
  assert a_label.dtype == np.uint8 and a_label.shape == (64, 64)


def test_synthetic_uses_every_class_and_colour_does_not_give_the_class():
  images, labels = synthetic.load_split(0, "train", 64, 64)
  counts = np.bincount(labels.ravel(), minlength=synthetic.NUM_CLASSES)
  assert np.all(counts > 0.01 * labels.size), counts
  # Objects are randomly coloured: the mean colour of each class is close to grey,
  # and varies a lot within the class.
  for class_id in range(1, synthetic.NUM_CLASSES):
    pixels = images[labels == class_id].astype(np.float64) / 255
    assert pixels.std(axis=0).min() > 0.2, synthetic.CLASS_NAMES[class_id]


def test_labelled_subset_is_a_seeded_random_choice():
  a = data_lib.choose_labelled(100, 10, seed=0)
  np.testing.assert_array_equal(a, data_lib.choose_labelled(100, 10, seed=0))
  assert not np.array_equal(a, data_lib.choose_labelled(100, 10, seed=1))
  assert not np.array_equal(a, np.arange(10)), "not the first N"
  assert len(set(a)) == 10
  np.testing.assert_array_equal(data_lib.choose_labelled(7, -1, seed=0), np.arange(7))


def test_asking_for_too_many_labelled_images_says_so():
  with pytest.raises(ValueError, match="num_labelled=101.*100 training images"):
    data_lib.choose_labelled(100, 101, seed=0)


def test_random_batches_flip_image_and_label_together():
  image = np.arange(4 * 2 * 3 * 3).reshape(4, 2, 3, 3)
  label = image[..., 0].copy()  # the label is a function of the pixel
  batches = data_lib.random_batches((image, label), 3, seed=0)
  flipped = 0
  for _ in range(20):
    image_batch, label_batch = next(batches)
    np.testing.assert_array_equal(image_batch[..., 0], label_batch)
    flipped += int(np.any([not any(np.array_equal(b, x) for x in image) for b in image_batch]))
  assert flipped > 0


def test_eval_batches_pad_with_ignored_labels():
  images = np.zeros((5, 32, 32, 3), np.uint8)
  labels = np.ones((5, 32, 32), np.uint8)
  batches = list(data_lib.eval_batches(images, labels, 4))
  assert [b[0].shape[0] for b in batches] == [4, 4]
  np.testing.assert_array_equal(batches[1][1][1:], 255)
  np.testing.assert_array_equal(batches[1][1][0], 1)


def test_unknown_dataset_name_is_an_error(tiny_config):
  tiny_config.data.name = "imagenet"
  with pytest.raises(ValueError, match="config.data.name='imagenet'"):
    data_lib.load_datasets(tiny_config)
