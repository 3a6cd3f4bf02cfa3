"""Tests of cowmix_jax/method_keys.py: the table of which method reads which setting,
checked against the training step itself, and its use by main and the grid runner."""

import jax
import numpy as np
import pytest

from cowmix_jax import config_checks, method_keys, mixing, sharding, steps
from cowmix_jax.cli import ConfigError
from cowmix_jax.config_base import get_base_config
from cowmix_jax.experiments import ablation
from tests.test_steps import _host_copy, _setup

# A valid value other than the tiny config's for each setting of METHOD_KEYS.
OTHER_VALUES = {
    "cons_weight": 3.0, "consistency_loss": "kl", "confidence.threshold": 0.5,
    "confidence.mode": "pixel", "aug_consistency.rotation_degrees": 5.0,
    "aug_consistency.flip": False, "mask.ict_alpha": 1.0,
    "mask.cutout_p_range": (0.2, 0.3), "mask.cutmix_p_range": (0.2, 0.3),
    "mask.cowout_p_range": (0.2, 0.3), "mask.cowmix_p_range": (0.2, 0.3),
    "mask.cow_sigma_range": (2.0, 3.0), "mask.cow_canvas_margin_sigmas": 1.0,
    "mask.exact_proportion": True, "mask.box_area_range": (0.1, 0.2),
    "mask.box_aspect_range": (0.5, 2.0), "mask.mix": "cow",
    "pseudo_label_threshold": 0.5, "mask.mix_probability": 0.9,
    "mask.complementary": True, "strong_blur_sigma_range": (0.5, 1.0),
}


def _set(config, key, value):
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def test_every_registered_method_is_classified_and_every_key_exists():
  assert set(method_keys.METHODS) == set(mixing.PERTURBATIONS)
  known = set(ablation.config_keys(get_base_config()))
  for key in method_keys.METHOD_KEYS:
    assert key in known or any(k.startswith(key) for k in known if key.endswith(".")), key
  assert {key for key in OTHER_VALUES if method_keys.key_readers(key) is None} == set()
  assert set(OTHER_VALUES) >= {k for k in method_keys.METHOD_KEYS if not k.endswith(".")}


@pytest.mark.parametrize("method,key,reads", [
    ("cowmix", "mask.mix", False), ("fixmatch", "mask.mix", True),
    ("fixmatch", "cons_weight", False), ("ict", "confidence.mode", True),
    ("supervised", "confidence.threshold", False), ("aug", "aug_consistency.flip", True),
    ("cowmix", "aug_consistency.flip", False), ("unimatch", "mask.complementary", True),
    ("cowmix", "learning_rate", True), ("supervised", "data.num_labelled", True),
])
def test_reads_key_by_hand(method, key, reads):
  assert method_keys.reads_key(key, method) is reads


def test_strong_view_readers_depend_on_the_mask_kind_and_complementary():
  assert method_keys.reads_key("mask.cow_sigma_range", "unimatch", mix="cow")
  assert not method_keys.reads_key("mask.cow_sigma_range", "unimatch", mix="box")
  assert method_keys.reads_key("mask.box_area_range", "fixmatch", mix="box")
  assert not method_keys.reads_key("mask.box_area_range", "fixmatch", mix="cow")
  assert method_keys.reads_key("mask.mix_probability", "unimatch", complementary=False)
  assert not method_keys.reads_key("mask.mix_probability", "unimatch", complementary=True)
  assert method_keys.readers_text("mask.mix_probability") == (
      "fixmatch, unimatch without mask.complementary")


def _one_step(config, synthetic_batch):
  model, tx, state = _setup(config)
  mesh = sharding.make_mesh(1)
  train_step = steps.make_train_step(model, tx, config, mesh)
  state, aux = train_step(jax.device_put(state, sharding.replicated(mesh)),
                          jax.device_put(synthetic_batch(config, 0), sharding.batch_sharded(mesh)))
  return _host_copy(state.params), _host_copy(aux)


@pytest.mark.parametrize("method,mix", [
    ("supervised", "box"), ("cowmix", "box"), ("fixmatch", "box"),
    pytest.param("unimatch", "cow", marks=pytest.mark.slow),
    pytest.param("ict", "box", marks=pytest.mark.slow),
    pytest.param("aug", "box", marks=pytest.mark.slow),
    pytest.param("cutout", "box", marks=pytest.mark.slow),
    pytest.param("cutmix", "box", marks=pytest.mark.slow),
    pytest.param("cowout", "box", marks=pytest.mark.slow),
])
def test_settings_a_method_does_not_read_leave_its_step_unchanged(method, mix, tiny_config,
                                                                  synthetic_batch):
  """The table's claim checked on the step: every setting it says ``method`` does not
  read, changed at once, gives the same parameters and losses bit for bit (a setting
  the method did read would be refused by main when given)."""
  tiny_config.method, tiny_config.mask.mix = method, mix
  tiny_config.confidence.mode = "none"  # the consistency term counts from the first step
  tiny_config.pseudo_label_threshold = 0.0
  unread = [key for key in OTHER_VALUES
            if not method_keys.reads_key(key, method, mix)
            and not (method == "fixmatch" and key == "mask.complementary")]  # refused
  assert unread
  changed = tiny_config.copy_and_resolve_references()
  for key in unread:
    _set(changed, key, OTHER_VALUES[key])
  params, aux = _one_step(tiny_config, synthetic_batch)
  changed_params, changed_aux = _one_step(changed, synthetic_batch)
  assert aux == changed_aux
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(changed_params)):
    np.testing.assert_array_equal(a, b)


def test_main_refuses_an_override_the_method_does_not_read():
  config = get_base_config()
  config.method = "cowmix"
  with pytest.raises(ConfigError, match=r"--config.mask.mix='cows' has no effect: "
                     r"config.method=cowmix does not read it \(read by fixmatch, unimatch\)"):
    config.mask.mix = "cows"
    config_checks.check_overrides_take_effect(config, ["mask.mix", "learning_rate"])
  config.method = "unimatch"
  config.mask.mix, config.mask.complementary = "cow", True
  with pytest.raises(ConfigError, match="mask.mix_probability"):
    config_checks.check_overrides_take_effect(config, ["mask.mix_probability"])
  config_checks.check_overrides_take_effect(config, ["mask.cow_sigma_range", "mask.mix"])


def test_an_override_of_the_other_familys_threshold_names_the_one_the_method_reads():
  config = get_base_config()
  config.method = "fixmatch"
  with pytest.raises(ConfigError, match=r"--config.confidence.threshold=.* has no effect: "
                     r"config.method=fixmatch does not read it \(read by aug, .*\); "
                     r"fixmatch reads config.pseudo_label_threshold$"):
    config_checks.check_overrides_take_effect(config, ["confidence.threshold"])
  config.method = "cowmix"
  with pytest.raises(ConfigError, match=r"cowmix reads config.confidence.threshold$"):
    config_checks.check_overrides_take_effect(config, ["pseudo_label_threshold"])
  config.method = "supervised"  # reads neither: no pointer
  with pytest.raises(ConfigError, match=r"\(read by fixmatch, unimatch\)$"):
    config_checks.check_overrides_take_effect(config, ["pseudo_label_threshold"])


def test_runner_leaves_a_set_out_of_runs_that_do_not_read_it():
  defaults = {"mask.mix": "box", "mask.complementary": "False"}
  runs = ablation.plan_runs(["supervised", "cowmix", "unimatch_cow_complementary",
                             "unimatch_box"], [0], [])
  common = [("mask.cow_sigma_range", "(2.0, 8.0)"), ("data.manual_dir", "/data")]
  kept = {run.method: ablation.overrides_read_by(run, common, defaults) for run in runs}
  assert kept == {"supervised": [("data.manual_dir", "/data")], "cowmix": common,
                  "unimatch_cow_complementary": common,
                  "unimatch_box": [("data.manual_dir", "/data")]}
  notes = ablation.check_overrides_read(runs, common, defaults)
  assert notes == ["--set=mask.cow_sigma_range is left out of the runs of supervised, "
                   "unimatch_box, which do not read it"]
  with pytest.raises(Exception, match="no method of the grid reads it"):
    ablation.check_overrides_read(runs[:1], common, defaults)
  varied = ablation.plan_runs(["cowmix"], [0], [("mask.mix", ["box"])])
  with pytest.raises(Exception, match="--vary=mask.mix: cowmix does not read it"):
    ablation.check_overrides_read(varied, [], defaults)


@pytest.mark.parametrize("method,mix,complementary,text", [
    ("cowmix", "cow", True, "cowmix"), ("fixmatch", "box", False, "fixmatch with box masks"),
    ("unimatch", "cow", True, "unimatch with cow masks, complementary"),
    ("unimatch", "box", False, "unimatch with box masks")])
def test_describe_names_a_strong_view_runs_mask_kind(method, mix, complementary, text):
  assert method_keys.describe(method, mix, complementary) == text
