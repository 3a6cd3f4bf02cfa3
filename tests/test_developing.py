"""docs/DEVELOPING.md's worked examples, executed as written: a perturbation trains,
a model trains, a dataset builds, each registered from outside the package."""

import importlib.util
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cowmix_jax import metrics_file, mixing, models, train
from cowmix_jax.data import base, builders

from conftest import REPO, write_png

DOC = os.path.join(REPO, "docs", "DEVELOPING.md")


def _blocks(heading):
  """The python blocks of the section ``## heading`` of docs/DEVELOPING.md."""
  text = open(DOC).read()
  section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def _import_block(code, name, directory, monkeypatch):
  """Imports ``code`` as the module ``name`` (a file in ``directory``), as a user's
  module would be imported."""
  (directory / f"{name}.py").write_text(code)
  monkeypatch.syspath_prepend(str(directory))
  return importlib.import_module(name)


def _train_two_steps(config, tmp_path):
  config.data.data_dir = str(tmp_path / "tfds")
  results = train.train_and_evaluate(config, str(tmp_path / "work"))
  return results, metrics_file.read_metrics(str(tmp_path / "work"))


def test_the_perturbation_example_trains_and_its_config_selects_it(tiny_config, tmp_path,
                                                                   monkeypatch):
  perturbation_code, config_code = _blocks("Adding a perturbation")
  example = _import_block(perturbation_code, "my_perturbations", tmp_path, monkeypatch)
  try:
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    flip = mixing.make_perturbation(type(tiny_config)(dict(tiny_config, method="hflip")))
    assert isinstance(flip, example.HorizontalFlip)
    teacher_input, student_input = flip.inputs(images, flip.sample(None, images))
    np.testing.assert_array_equal(student_input, np.asarray(images)[:, :, ::-1])
    # Mirroring the student's view back gives the teacher's: the target is consistent.
    target, _ = flip.target(teacher_input, {})
    np.testing.assert_array_equal(target, student_input)

    tiny_config.method = "hflip"
    tiny_config.confidence.mode = "none"
    results, logged = _train_two_steps(tiny_config, tmp_path)
    assert results["step"] == 2
    # The supervised path would log a consistency loss of exactly 0.
    assert all(logged[step]["consistency_loss"] > 0 for step in (1, 2)), logged

    # The config file, loaded as cowmix_jax.main loads it, with the module importable.
    monkeypatch.syspath_prepend(REPO)
    (tmp_path / "hflip.py").write_text(config_code)
    spec = importlib.util.spec_from_file_location("hflip_config", tmp_path / "hflip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config().method == "hflip"
  finally:
    mixing.PERTURBATIONS.unregister("hflip")
    sys.modules.pop("my_perturbations", None)


def test_the_model_example_builds_and_trains(tiny_config, tmp_path, monkeypatch):
  (code,) = _blocks("Adding a model")
  _import_block(code, "my_models", tmp_path, monkeypatch)
  try:
    tiny_config.model.name = "tiny_fcn"
    tiny_config.model.width = 8
    model = models.build_model(tiny_config.model, 6)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 24, 3)))
    # Two 3x3 convolutions of 8 channels and a 1x1 classifier, counted by hand.
    expected = (3 * 3 * 3 * 8 + 8) + 2 * 8 + (3 * 3 * 8 * 8 + 8) + 2 * 8 + (8 * 6 + 6)
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == expected
    assert model.apply(variables, jnp.zeros((2, 16, 24, 3))).shape == (2, 16, 24, 6)
    results, _ = _train_two_steps(tiny_config, tmp_path)
    assert results["step"] == 2 and len(results["per_class_iou"]) == 6
  finally:
    models.MODELS.unregister("tiny_fcn")
    sys.modules.pop("my_models", None)


def test_the_dataset_example_builds_from_its_layout(tiny_config, tmp_path, monkeypatch):
  (code,) = _blocks("Adding a dataset")
  rng = np.random.default_rng(0)
  labels = {}
  for folder, count in (("train", 3), ("val", 2)):
    for index in range(count):
      name = f"{folder}{index}"
      labels[name] = (rng.random((10, 12)) < 0.3).astype(np.uint8)
      write_png(str(tmp_path / "two" / folder / "images" / f"{name}.png"),
                rng.integers(0, 256, (10, 12, 3)))
      write_png(str(tmp_path / "two" / folder / "labels" / f"{name}.png"), labels[name])
  if "two_class" in base.DATASETS:
    pytest.skip("registered already in this process (tfds names are global)")
  _import_block(code, "my_datasets", tmp_path, monkeypatch)
  try:
    data = tiny_config.data
    data.name, data.data_dir = "two_class", str(tmp_path / "tfds")
    with pytest.raises(base.DatasetLayoutError, match="TWO_CLASS_DIR"):
      builders.make_builder(data)  # no directory given yet: the error says how
    monkeypatch.setenv("TWO_CLASS_DIR", str(tmp_path / "two"))
    builder = builders.prepare(data)
    assert builder.info.splits["train"].num_examples == 3
    read = list(tfds.as_numpy(builder.as_dataset(split="validation")))
    assert sorted(example["image_id"].decode() for example in read) == ["val0", "val1"]
    for example in read:
      np.testing.assert_array_equal(example["label"], labels[example["image_id"].decode()])
  finally:
    base.DATASETS.unregister("two_class")
    sys.modules.pop("my_datasets", None)
