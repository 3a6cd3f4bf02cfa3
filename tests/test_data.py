"""Tests of cowmix_jax/data/__init__.py (the inputs of a run) and data/synthetic.py."""

import json

import numpy as np
import pytest

from cowmix_jax import config_base
from cowmix_jax import data as data_lib
from cowmix_jax.data import builders, splits, synthetic

from conftest import load_config, write_png


@pytest.mark.parametrize("task", sorted(synthetic.TASKS))
def test_synthetic_is_deterministic_by_seed_and_index(task):
  render = synthetic.TASKS[task][0]
  a_image, a_label = render(0, "train", 5, 64)
  b_image, b_label = render(0, "train", 5, 64)
  np.testing.assert_array_equal(a_image, b_image)
  np.testing.assert_array_equal(a_label, b_label)
  c_image, _ = render(1, "train", 5, 64)
  d_image, _ = render(0, "validation", 5, 64)
  assert np.mean(a_image != c_image) > 0.5 and np.mean(a_image != d_image) > 0.5
  assert a_image.dtype == np.uint8 and a_image.shape == (64, 64, 3)
  assert a_label.dtype == np.uint8 and a_label.shape == (64, 64)


@pytest.mark.parametrize("task", sorted(synthetic.TASKS))
def test_synthetic_uses_every_class_and_colour_does_not_give_the_class(task):
  images, labels = _load_split(0, "train", 64, 64, task)
  names = synthetic.TASKS[task][1]
  counts = np.bincount(labels.ravel(), minlength=len(names))
  assert len(counts) == len(names) and np.all(counts > 0.01 * labels.size), counts
  # Objects are randomly coloured: the mean colour of each class is close to grey,
  # and varies a lot within the class.
  for class_id in range(1, len(names)):
    pixels = images[labels == class_id].astype(np.float64) / 255
    assert pixels.std(axis=0).min() > 0.2, names[class_id]


def _load_split(seed: int, split: str, num_examples: int, size: int, task: str):
  """All examples of a split of a synthetic ``task``, rendered directly:
  ``(images [N, S, S, 3] uint8, labels [N, S, S] uint8)``."""
  pairs = [synthetic.TASKS[task][0](seed, split, i, size) for i in range(num_examples)]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _orientation_coherence(pattern: np.ndarray) -> float:
  """(l1 - l2) / (l1 + l2) of the structure tensor: 1 when every edge runs one way."""
  gy, gx = np.gradient(pattern.astype(np.float64))
  tensor = np.array([[np.sum(gx * gx), np.sum(gx * gy)], [np.sum(gx * gy), np.sum(gy * gy)]])
  low, high = np.linalg.eigvalsh(tensor)
  return (high - low) / max(high + low, 1e-12)


def test_texture_classes_are_the_patterns_they_name():
  # Independent reading of each pattern: its fill fraction and how one-directional its
  # edges are (the structure tensor), over many random scales, angles and phases.
  rows, cols = np.mgrid[0:64, 0:64].astype(np.float32)
  rng = np.random.default_rng(0)
  for _ in range(20):
    plain, stripes, checks, dots = (synthetic._texture(rng, name, rows, cols)
                                    for name in synthetic.TEXTURE_CLASS_NAMES[1:])
    assert np.all(plain == 1)
    assert 0.35 < stripes.mean() < 0.65 and _orientation_coherence(stripes) > 0.6
    assert 0.35 < checks.mean() < 0.65 and _orientation_coherence(checks) < 0.3
    assert 0.05 < dots.mean() < 0.35 and _orientation_coherence(dots) < 0.3
  # In the images, patterned blobs span a dark and a light shade; plain ones do not.
  images, labels = _load_split(0, "train", 32, 64, "textures")
  brightness = images.max(axis=-1).astype(np.float64)
  spread = {name: np.median([np.percentile(b[m == c], 90) / np.percentile(b[m == c], 10)
                             for b, m in zip(brightness, labels) if np.sum(m == c) > 100])
            for c, name in enumerate(synthetic.TEXTURE_CLASS_NAMES) if c}
  assert spread["plain"] < 1.6 < min(spread["stripes"], spread["checks"], spread["dots"]), spread


def test_texture_task_builds_with_its_own_classes(tmp_path, tiny_config):
  data = tiny_config.data
  data.data_dir, data.task = str(tmp_path / "tfds"), "textures"
  builder = builders.prepare(data)
  assert builder.info.metadata["class_names"] == list(synthetic.TEXTURE_CLASS_NAMES)
  example = next(iter(builder.as_dataset(split="train").as_numpy_iterator()))
  image, label = synthetic.render_texture_example(0, "train", int(example["image_id"][-5:]),
                                                  32)
  np.testing.assert_array_equal(example["label"], label)
  np.testing.assert_array_equal(example["image"], image)


def _inputs(config, tmp_path, **data):
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.update(data)
  (tmp_path / "work").mkdir(exist_ok=True)
  return data_lib.make_inputs(config, str(tmp_path / "work"))


def test_inputs_train_on_the_chosen_subset_and_record_it(tiny_config, tmp_path):
  inputs = _inputs(tiny_config, tmp_path)
  assert inputs.class_names == list(synthetic.CLASS_NAMES)
  recorded = json.loads((tmp_path / "work" / "labelled_ids.json").read_text())
  assert recorded["ids"] == inputs.labelled_ids and recorded["num_available"] == 32
  assert inputs.labelled_ids == splits.choose_labelled(
      [f"train_{i:05d}" for i in range(32)], 8, tiny_config.seed)
  rendered = {f"train_{i:05d}": synthetic.render_example(0, "train", i, 32)[1]
              for i in range(32)}
  batch = next(inputs.train)
  assert batch["image"].shape == (8, 32, 32, 3)
  assert batch["unlabelled_image"].shape == (16, 32, 32, 3)
  for label in batch["label"]:  # every labelled image is one of the chosen (maybe flipped)
    assert any(np.array_equal(label, rendered[i]) or np.array_equal(label, rendered[i][:, ::-1])
               for i in inputs.labelled_ids)


def test_a_labelled_id_file_overrides_the_draw(tiny_config, tmp_path):
  (tmp_path / "ids.txt").write_text("train_00004\ntrain_00009\n")
  inputs = _inputs(tiny_config, tmp_path, labelled_ids_file=str(tmp_path / "ids.txt"))
  assert inputs.labelled_ids == ["train_00004", "train_00009"]
  (tmp_path / "bad.txt").write_text("train_00004\ntrain_99999\n")
  with pytest.raises(ValueError, match="bad.txt: 1 id\\(s\\) are not in the training split"):
    _inputs(tiny_config, tmp_path, labelled_ids_file=str(tmp_path / "bad.txt"))


def test_asking_for_more_labelled_images_than_exist_says_so(tiny_config, tmp_path):
  with pytest.raises(ValueError, match="num_labelled=33.*32 training images"):
    _inputs(tiny_config, tmp_path, num_labelled=33)


def test_unknown_dataset_name_is_an_error(tiny_config, tmp_path):
  with pytest.raises(ValueError, match="config.data.name='imagenet'.*camvid"):
    _inputs(tiny_config, tmp_path, name="imagenet")


def _mixed_size_folder(root):
  """A folder dataset whose validation images have three sizes; returns them (H, W)."""
  sizes = [(9, 11), (13, 7), (5, 20)]
  root.mkdir()
  (root / "classes.json").write_text('["a", "b"]')
  rng = np.random.default_rng(0)
  for split in ("train", "validation"):
    for index, size in enumerate(sizes):
      write_png(str(root / split / "images" / f"{split}{index}.png"),
                rng.integers(0, 256, size + (3,)))
      write_png(str(root / split / "labels" / f"{split}{index}.png"), rng.integers(0, 2, size))
  return sizes


@pytest.mark.parametrize("downscale", [1, 2])
def test_auto_eval_canvas_is_the_largest_image_rounded_to_the_downscale(
    tmp_path, tiny_config, downscale):
  sizes = _mixed_size_folder(tmp_path / "mine")
  data = tiny_config.data
  data.name, data.manual_dir, data.data_dir = "folder", str(tmp_path / "mine"), str(
      tmp_path / "tfds")
  data.downscale = downscale
  builder = builders.prepare(data)
  height, width = (max(s[0] for s in sizes), max(s[1] for s in sizes))
  # 5x20: the largest area
  assert data_lib.largest_image(builder, "validation") == ((height, width), "validation2")
  data.eval_canvas = ("auto",)  # what --config.data.eval_canvas=auto makes of a tuple field
  canvas = data_lib.resolve_eval_canvas(data, builder, "validation")
  assert canvas == (-(-height // downscale) * downscale, -(-width // downscale) * downscale)
  assert data.eval_canvas == canvas
  data.eval_canvas = (height, width - 1)
  with pytest.raises(ValueError, match=rf"eval_canvas=\({height}, {width - 1}\) \(H, W\) "
                                       rf"cannot hold every validation image.*'validation2'"):
    data_lib.resolve_eval_canvas(data, builder, "validation")


@pytest.mark.parametrize("value, expected", [
    ("auto", None), (("auto",), None), ((64, 48), (64, 48)), ("(64, 48)", (64, 48)),
    ("64,48", (64, 48))])
def test_canvas_settings(value, expected):
  assert data_lib.canvas_setting(value) == expected


@pytest.mark.parametrize("value", ["big", (64,), (64, 0), "(64.5, 3)"])
def test_bad_canvas_settings_are_named(value):
  with pytest.raises(ValueError, match="config.data.eval_canvas="):
    data_lib.canvas_setting(value)


def test_auto_crop_and_sigma_follow_the_largest_training_image(tmp_path, tiny_config,
                                                               monkeypatch):
  sizes = _mixed_size_folder(tmp_path / "mine")
  config = load_config("folder")
  config.data.manual_dir, config.data.data_dir = str(tmp_path / "mine"), str(tmp_path / "tfds")
  config_base.replace_field(config.data, "downscale", 2)  # a field that may be "auto"
  builder = builders.prepare(config.data)
  monkeypatch.setattr(data_lib, "AUTO_CROP_LIMIT", 8)  # caps the 20-pixel width
  data_lib.resolve_data_settings(config, builder)
  height = max(s[0] for s in sizes)
  assert config.data.augment.crop_size == (-(-height // 2), 8)  # (7, 8)
  assert config.mask.cow_sigma_range == (round(7 * 4 / 360, 2), round(7 * 16 / 360, 2))
  assert config.data.eval_canvas == (14, 20)


def test_crop_and_sigma_given_on_the_command_line_are_parsed_into_the_config(tmp_path):
  """configs/folder.py leaves both at "auto" (string fields), so a command-line value
  arrives as the string "(6, 8)"; the run must train with the tuple, not the string."""
  _mixed_size_folder(tmp_path / "mine")
  config = load_config("folder")
  config.data.manual_dir, config.data.data_dir = str(tmp_path / "mine"), str(tmp_path / "tfds")
  config_base.replace_field(config.data, "downscale", 2)
  config.data.augment.crop_size = "(6, 8)"
  config.mask.cow_sigma_range = "(0.5, 2.0)"
  builder = builders.prepare(config.data)
  data_lib.resolve_data_settings(config, builder)
  assert config.data.augment.crop_size == (6, 8)
  assert config.mask.cow_sigma_range == (0.5, 2.0)
