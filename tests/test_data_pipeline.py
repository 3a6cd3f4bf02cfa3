"""Tests of cowmix_jax/data/pipeline.py: augmentation alignment, padding, streams."""

import math

import numpy as np
import pytest
import tensorflow as tf

from cowmix_jax.data import pipeline, synthetic

IMAGENET = pipeline.NORMALISATIONS["imagenet"]


def _denormalise(image, spec=IMAGENET):
  return np.asarray(image) * np.array(spec["std"]) + np.array(spec["mean"])


def _blocky_scene(seed, shape=(48, 64), block=16, classes=6):
  """A label of random 16x16 blocks, and an image whose colour is a function of the label."""
  rng = np.random.default_rng(seed)
  blocks = rng.integers(0, classes, (shape[0] // block, shape[1] // block))
  label = np.kron(blocks, np.ones((block, block), np.int64)).astype(np.uint8)
  palette = np.array([[20, 20, 200], [200, 30, 30], [30, 200, 30], [220, 220, 40],
                      [40, 220, 220], [230, 40, 230]], np.float64)
  return palette[label].astype(np.uint8), label, palette


def _augment(image, label, seed, aug, normalisation="imagenet"):
  out = pipeline.augment(tf.constant(image), None if label is None else tf.constant(label),
                         tf.constant([seed, 7], tf.int64), aug, normalisation)
  return {k: v.numpy() for k, v in out.items()}


def _constant_nearby(x, radius=2):
  """True where the ``(2r+1)^2`` neighbourhood of ``x [H, W]`` is constant (border
  excluded): far enough from edges that bilinear and nearest resampling agree."""
  height, width = x.shape
  centre = x[radius:height - radius, radius:width - radius]
  same = np.ones_like(centre, bool)
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      same &= x[radius + dy:height - radius + dy, radius + dx:width - radius + dx] == centre
  out = np.zeros_like(x, bool)
  out[radius:height - radius, radius:width - radius] = same
  return out


def test_augmentation_keeps_image_and_label_aligned():
  aug = pipeline.Augmentation(crop_size=(56, 72), scale_range=(0.5, 1.5), hflip=True,
                              rotation_degrees=15.0)
  interior_total = 0
  for seed in range(12):
    image, label, palette = _blocky_scene(seed)
    out = _augment(image, label, seed, aug)
    assert out["image"].shape == (56, 72, 3) and out["label"].shape == (56, 72)
    colours = _denormalise(out["image"])
    valid = out["valid"]
    # Outside the image: ignored label, zero validity, the mean colour (0 normalised).
    np.testing.assert_array_equal(out["label"][valid == 0], 255)
    np.testing.assert_array_equal(out["image"][valid == 0], 0)
    assert set(np.unique(out["label"][valid == 1])) <= set(range(6))
    # Inside blocks: the colour is still palette[label].
    interior = _constant_nearby(out["label"]) & _constant_nearby(valid) & (valid == 1)
    errors = np.abs(colours[interior] - palette[out["label"][interior]]).max(axis=-1)
    assert np.sum(errors >= 1.0) <= 0.02 * errors.size, (seed, np.mean(errors < 1.0))
    interior_total += interior.sum()
  assert interior_total > 0.2 * 12 * 56 * 72, "the check covered most pixels"


def test_misaligned_augmentation_would_fail_the_alignment_check():
  """The alignment check above is not vacuous: flipping only the label breaks it."""
  image, label, palette = _blocky_scene(0)
  interior = _constant_nearby(label)
  errors = np.abs(image[interior].astype(float) - palette[label[:, ::-1][interior]]).max(-1)
  assert np.mean(errors < 1.0) < 0.5


def test_crop_pads_with_ignore_and_zero_validity():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  label = rng.integers(0, 5, (20, 30), dtype=np.uint8)
  aug = pipeline.Augmentation(crop_size=(32, 40), hflip=True)
  flips = set()
  for seed in range(8):
    out = _augment(image, label, seed, aug)
    np.testing.assert_array_equal(out["valid"][:20, :30], 1)
    np.testing.assert_array_equal(out["valid"][20:], 0)
    np.testing.assert_array_equal(out["valid"][:, 30:], 0)
    np.testing.assert_array_equal(out["label"][20:], 255)
    np.testing.assert_array_equal(out["label"][:, 30:], 255)
    flipped = np.array_equal(out["label"][:20, :30], label[:, ::-1])
    assert flipped or np.array_equal(out["label"][:20, :30], label)
    np.testing.assert_allclose(_denormalise(out["image"][:20, :30]),
                               image[:, ::-1] if flipped else image, atol=1e-3)
    flips.add(flipped)
  assert flips == {True, False}
  unlabelled = _augment(image, None, 0, aug)
  np.testing.assert_array_equal(unlabelled["valid"], _augment(image, label, 0, aug)["valid"])


def test_normalisations_by_hand():
  pixel = tf.constant([[[10.0, 20.0, 30.0]]])
  caffe = pipeline.normalise(pixel, "caffe").numpy()[0, 0]
  np.testing.assert_allclose(caffe, [30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434],
                             rtol=1e-6)
  imagenet = pipeline.normalise(pixel, "imagenet").numpy()[0, 0]
  np.testing.assert_allclose(imagenet, [(10 - 0.485 * 255) / (0.229 * 255),
                                        (20 - 0.456 * 255) / (0.224 * 255),
                                        (30 - 0.406 * 255) / (0.225 * 255)], rtol=1e-5)
  with pytest.raises(ValueError, match="config.model.normalisation='rgb'"):
    pipeline.normalise(pixel, "rgb")


def test_scale_factors_continuous_and_in_steps():
  stepped = pipeline.Augmentation(crop_size=(8, 8), scale_range=(0.5, 1.5), scale_step=0.1)
  values = {round(float(pipeline._scale_factor(stepped, tf.constant([s, 0], tf.int64))), 6)
            for s in range(300)}
  assert values == {round(0.5 + 0.1 * k, 6) for k in range(11)}
  continuous = pipeline.Augmentation(crop_size=(8, 8), scale_range=(0.8, 1.25))
  values = [float(pipeline._scale_factor(continuous, tf.constant([s, 0], tf.int64)))
            for s in range(300)]
  assert 0.8 <= min(values) < 0.82 and 1.23 < max(values) <= 1.25
  assert len(set(values)) == 300


def test_colour_jitter_has_the_configured_spread():
  image = np.full((16, 16, 3), 128, np.uint8)
  image[:8] = 96  # some contrast to scale
  aug = pipeline.Augmentation(crop_size=(16, 16), hflip=False, brightness_std=0.05,
                              contrast_log_std=math.log(1.1))
  shifts, log_contrasts = [], []
  for seed in range(400):
    out = _denormalise(_augment(image, None, seed, aug)["image"])
    shifts.append(out.mean() - image.mean())
    log_contrasts.append(np.log(out.std() / image.std()))
  assert abs(np.std(shifts) / (0.05 * 255) - 1) < 0.15
  assert abs(np.std(log_contrasts) / math.log(1.1) - 1) < 0.15


def test_unknown_augmentation_key_is_named():
  import ml_collections

  with pytest.raises(ValueError, match="unknown keys \\['vflip'\\]"):
    pipeline.Augmentation.from_config(ml_collections.ConfigDict(dict(crop_size=(8, 8),
                                                                     vflip=True)))


# ---------------------------------------------------------------------------------------
# Streams over the synthetic builder (tests/conftest.py).

PLAIN = pipeline.Augmentation(crop_size=(32, 32), hflip=False)


def _rendered(split, count):
  return {f"{split}_{i:05d}": synthetic.render_example(0, split, i, 32) for i in range(count)}


def _identify(images, rendered):
  """The id of each normalised ``grey`` image, by exact match with the rendered images."""
  ids = []
  for image in images:
    pixels = np.round(image * 63.75 + 127.5).astype(np.uint8)
    matches = [i for i, (r, _) in rendered.items() if np.array_equal(r, pixels)]
    assert len(matches) == 1
    ids.append(matches[0])
  return ids


def _take(dataset, count):
  return list(dataset.take(count).as_numpy_iterator())


def test_labelled_stream_yields_only_the_chosen_images(synthetic_builder):
  chosen = ["train_00003", "train_00007", "train_00011", "train_00019", "train_00020"]
  rendered = _rendered("train", 24)
  batches = _take(pipeline.labelled_stream(synthetic_builder, "train", chosen, 2, 5, PLAIN,
                                           "grey"), 10)
  seen = []
  for batch in batches:
    ids = _identify(batch["image"], rendered)
    for image_id, label in zip(ids, batch["label"]):
      np.testing.assert_array_equal(label, rendered[image_id][1])
    seen += ids
  assert set(seen) == set(chosen)
  again = _take(pipeline.labelled_stream(synthetic_builder, "train", chosen, 2, 5, PLAIN,
                                         "grey"), 10)
  other = _take(pipeline.labelled_stream(synthetic_builder, "train", chosen, 2, 6, PLAIN,
                                         "grey"), 10)
  assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(batches, again))
  assert not all(np.array_equal(a["image"], b["image"]) for a, b in zip(batches, other))


@pytest.mark.parametrize("stream", ["labelled", "unlabelled"])
def test_process_rows_and_resumed_streams_rebuild_the_global_batches(synthetic_builder, stream):
  chosen = ["train_00001", "train_00002", "train_00005", "train_00008", "train_00013",
            "train_00021"]

  def make(**kwargs):
    if stream == "labelled":
      return pipeline.labelled_stream(synthetic_builder, "train", chosen, 4, 0, PLAIN,
                                      "grey", **kwargs)
    return pipeline.unlabelled_stream(synthetic_builder, ["train"], 4, 0, PLAIN, "grey",
                                      **kwargs)

  single = _take(make(), 8)
  shares = [_take(make(process_index=i, process_count=2), 8) for i in range(2)]
  for whole, first, second in zip(single, *shares):
    for key in whole:  # process 0 holds rows 0-1 of each global batch, process 1 rows 2-3
      np.testing.assert_array_equal(whole[key], np.concatenate([first[key], second[key]]))
  resumed = _take(make(start_batch=5), 3)
  for whole, later in zip(single[5:], resumed):
    for key in whole:
      np.testing.assert_array_equal(whole[key], later[key])


def test_unlabelled_stream_covers_the_training_split(synthetic_builder):
  rendered = _rendered("train", 24)
  stream = pipeline.unlabelled_stream(synthetic_builder, ["train"], 4, 0, PLAIN, "grey")
  batches = _take(stream, 6)
  seen = [i for b in batches for i in _identify(b["unlabelled_image"], rendered)]
  assert sorted(seen) == sorted(rendered), "one epoch of 24 images in 6 batches of 4"
  assert all(np.all(b["unlabelled_valid"] == 1) for b in batches)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_pad_to_the_canvas_and_to_full_batches(synthetic_builder, process_count):
  rendered = _rendered("validation", 8)
  counts, seen = [], []
  for index in range(process_count):
    batches = list(pipeline.eval_batches(synthetic_builder, "validation", (40, 48), 3, "grey",
                                         index, process_count))
    counts.append(len(batches))
    for batch in batches:
      images, labels = batch["image"], batch["label"]
      assert images.shape == (3, 40, 48, 3) and labels.shape == (3, 40, 48)
      real = batch["size"][:, 0] > 0
      assert np.all(batch["size"][real] == 32) and np.all(batch["image_id"][~real] == b"")
      assert [i.decode() for i in batch["image_id"][real]] == _identify(images[real, :32, :32],
                                                                         rendered)
      assert np.all(labels[:, 32:] == 255) and np.all(labels[:, :, 32:] == 255)
      seen += _identify(images[real, :32, :32], rendered)
      for image_id, label in zip(seen[-int(real.sum()):], labels[real]):
        np.testing.assert_array_equal(label[:32, :32], rendered[image_id][1])
  assert sorted(seen) == sorted(rendered)
  assert len(set(counts)) == 1, "every process runs the same number of eval steps"
  assert counts[0] == math.ceil(math.ceil(8 / process_count) / 3)


def test_downscale_matches_pil_antialiased_bilinear_and_strided_labels():
  from PIL import Image

  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (36, 48, 3)).astype(np.uint8)
  label = rng.integers(0, 11, (36, 48)).astype(np.uint8)
  small, small_label = pipeline.downscale(tf.constant(image), tf.constant(label), 4)
  assert small.shape == (9, 12, 3) and small_label.shape == (9, 12)
  # PIL's BILINEAR shrinks with a triangle filter widened by the factor: the same filter.
  reference = np.stack([np.asarray(Image.fromarray(image[..., c]).convert("F").resize(
      (12, 9), Image.BILINEAR)) for c in range(3)], -1)
  np.testing.assert_allclose(small.numpy(), reference, atol=0.5)
  # Nearest with half-pixel centres picks source pixel 4 i + 2: ids are never blended.
  np.testing.assert_array_equal(small_label.numpy(), label[2::4, 2::4])
  same, _ = pipeline.downscale(tf.constant(image), None, 1)
  np.testing.assert_array_equal(same.numpy(), image)


def test_downscale_factor_must_divide_the_canvas():
  with pytest.raises(ValueError, match=r"eval_canvas=\(40, 48\) is not divisible by "
                                       r"config.data.downscale=3"):
    pipeline.check_downscale(3, (40, 48))
  with pytest.raises(ValueError, match="downscale=0.5: need a whole number"):
    pipeline.check_downscale(0.5, (40, 48))


def test_downscaled_eval_batches_shrink_images_and_keep_full_labels(synthetic_builder):
  rendered = _rendered("validation", 8)
  full = next(pipeline.eval_batches(synthetic_builder, "validation", (40, 48), 3, "grey"))
  small = next(pipeline.eval_batches(synthetic_builder, "validation", (40, 48), 3, "grey",
                                     downscale_factor=4))
  assert small["image"].shape == (3, 10, 12, 3) and small["label"].shape == (3, 40, 48)
  np.testing.assert_array_equal(small["label"], full["label"])
  np.testing.assert_array_equal(small["size"], full["size"])
  for image_id, image in zip(small["image_id"], small["image"]):
    original = rendered[image_id.decode()][0].astype(np.float32)
    expected = pipeline.downscale(tf.constant(original), None, 4)[0].numpy()
    np.testing.assert_allclose(_denormalise(image[:8, :8], pipeline.NORMALISATIONS["grey"]),
                               expected, atol=1e-3)
    assert np.all(image[8:] == 0) and np.all(image[:, 8:] == 0)
