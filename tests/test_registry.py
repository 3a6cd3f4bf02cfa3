"""Tests of cowmix_jax/registry.py: the one registry pattern of the package."""

import pytest

from cowmix_jax import mixing, models
from cowmix_jax.data import base, builders  # noqa: F401  (builders registers them)
from cowmix_jax.registry import Registry


def test_a_registry_gives_back_what_was_registered_and_names_the_rest():
  registry = Registry("config.thing", "things")

  @registry.register("b")
  def build_b():
    return "B"

  registry.register("a")(lambda: "A")
  assert registry.get("b") is build_b and registry.get("a")() == "A"
  assert list(registry) == registry.names() == ["a", "b"] and "a" in registry
  with pytest.raises(ValueError, match=r"config.thing='c': choose one of "
                                       r"\['a', 'b'\] \(the known things\)"):
    registry.get("c")
  with pytest.raises(ValueError, match="config.thing='a' is registered twice"):
    registry.register("a")(lambda: "again")
  registry.unregister("a")
  assert registry.names() == ["b"]


def test_the_package_registers_the_paper_methods_models_and_datasets():
  assert mixing.PERTURBATIONS.names() == sorted(
      ["supervised", "aug", "ict", "cutout", "cutmix", "cowout", "cowmix",  # the paper's
       "fixmatch", "unimatch"])
  assert models.MODELS.names() == ["deeplab_v2", "deeplab_v3plus", "unet"]
  assert base.DATASETS.names() == ["camvid", "cityscapes", "folder", "pascal",
                                   "synthetic"]
