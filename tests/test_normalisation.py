"""Tests of cowmix_jax/normalisation.py against the input pipeline's normalisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from cowmix_jax.conventions import NORMALISATIONS
from cowmix_jax.data import pipeline
from cowmix_jax.normalisation import from_unit_rgb, to_unit_rgb


@pytest.mark.parametrize("normalisation", sorted(NORMALISATIONS))
def test_from_unit_rgb_is_the_pipelines_normalisation_and_to_unit_rgb_inverts_it(
    normalisation):
  rgb = np.random.default_rng(0).uniform(size=(2, 5, 7, 3)).astype(np.float32)
  pipeline_input = pipeline.normalise(tf.constant(rgb * 255), normalisation).numpy()
  np.testing.assert_allclose(from_unit_rgb(rgb, normalisation), pipeline_input, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(to_unit_rgb(pipeline_input, normalisation), rgb, atol=1e-6)
  # The same arithmetic on the device, inside jit.
  on_device = jax.jit(lambda x: to_unit_rgb(x, normalisation))(jnp.asarray(pipeline_input))
  np.testing.assert_allclose(np.asarray(on_device), rgb, atol=1e-6)


def test_caffe_inputs_are_bgr_so_red_becomes_the_last_channel():
  red = np.zeros((1, 1, 3), np.float32)
  red[..., 0] = 1.0
  caffe = from_unit_rgb(red, "caffe")
  mean = np.asarray(NORMALISATIONS["caffe"]["mean"])
  np.testing.assert_allclose(caffe[0, 0], [-mean[0], -mean[1], 255 - mean[2]], rtol=1e-6)


def test_an_unknown_normalisation_is_named():
  with pytest.raises(ValueError, match="config.model.normalisation='hsv'"):
    to_unit_rgb(np.zeros(3), "hsv")
