"""models/conv.py: the convolution whose kernel gradient is computed by matrix products."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cowmix_jax.models import conv

CHANNELS_LAST = ("NHWC", "HWIO", "NHWC")


def numpy_kernel_gradient(x, dy, kernel_size, strides, pads, dilation):
  """dW[i, j, c, o] = sum_{n, y, x} x_padded[n, y*s + i*d, x*s + j*d, c] dy[n, y, x, o],
  term by term in float64."""
  padded = np.pad(x.astype(np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
  _, out_h, out_w, _ = dy.shape
  grad = np.zeros(tuple(kernel_size) + (x.shape[-1], dy.shape[-1]))
  for i in range(kernel_size[0]):
    for j in range(kernel_size[1]):
      for y in range(out_h):
        for x_ in range(out_w):
          pixel = padded[:, y * strides[0] + i * dilation[0], x_ * strides[1] + j * dilation[1]]
          grad[i, j] += pixel.T @ dy[:, y, x_].astype(np.float64)
  return grad


CASES = [  # input shape, kernel shape, strides, pads, dilation
    ((2, 9, 7, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((1, 11, 10, 2), (3, 3, 2, 5), (2, 2), ((1, 1), (1, 1)), (1, 1)),
    ((2, 12, 9, 3), (3, 3, 3, 2), (1, 1), ((2, 2), (2, 2)), (2, 2)),
    ((1, 13, 8, 4), (7, 7, 4, 3), (2, 2), ((3, 3), (3, 3)), (1, 1)),
    ((2, 7, 6, 5), (1, 1, 5, 3), (2, 1), ((0, 0), (0, 0)), (1, 1)),
    ((1, 6, 5, 3), (2, 2, 3, 4), (1, 1), ((1, 0), (0, 1)), (1, 1)),  # the U-Net's phases
]


@pytest.mark.parametrize("x_shape,w_shape,strides,pads,dilation", CASES)
def test_kernel_gradient_matches_a_sum_over_windows(x_shape, w_shape, strides, pads,
                                                    dilation):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(x_shape).astype(np.float32)
  w = rng.standard_normal(w_shape).astype(np.float32)
  out_shape = lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                       dimension_numbers=CHANNELS_LAST).shape
  dy = rng.standard_normal(out_shape).astype(np.float32)
  ours = conv.kernel_gradient(jnp.asarray(x), jnp.asarray(dy), w_shape[:2], strides, pads,
                              dilation)
  expected = numpy_kernel_gradient(x, dy, w_shape[:2], strides, pads, dilation)
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-4)


def _route_everything_by_matmul(monkeypatch):
  monkeypatch.setattr(conv, "MAX_INPUT_CHANNELS_FOR_KXK", 10**6)
  monkeypatch.setattr(conv, "MIN_POSITIONS_FOR_KXK", 0)
  monkeypatch.setattr(conv, "MIN_CHANNELS_FOR_KXK", 0)


def _loss_and_gradients(conv_fn, x, w, strides, padding, dilation):
  def loss(x, w):
    y = conv_fn(x, w, strides, padding, rhs_dilation=dilation,
                dimension_numbers=CHANNELS_LAST)
    return jnp.sum(jnp.sin(y.astype(jnp.float32)))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((2, 1), (0, 3))])
@pytest.mark.parametrize("x_shape,w_shape,strides,dilation", [
    ((2, 17, 13, 6), (3, 3, 6, 5), (1, 1), (1, 1)),
    ((2, 17, 13, 6), (3, 3, 6, 5), (2, 2), (1, 1)),
    ((1, 17, 13, 6), (3, 3, 6, 5), (1, 1), (2, 3)),
    ((2, 17, 13, 6), (1, 1, 6, 5), (2, 2), (1, 1)),
])
def test_conv_equals_lax_in_value_and_both_gradients(monkeypatch, x_shape, w_shape,
                                                     strides, dilation, padding):
  _route_everything_by_matmul(monkeypatch)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
  ours = _loss_and_gradients(conv.conv_general_dilated, x, w, strides, padding, dilation)
  reference = _loss_and_gradients(lax.conv_general_dilated, x, w, strides, padding,
                                  dilation)
  np.testing.assert_allclose(ours[0], reference[0], rtol=1e-5)
  for got, want in zip(ours[1], reference[1]):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_bfloat16_kernel_gradient_is_bfloat16_and_close_to_float32(monkeypatch):
  _route_everything_by_matmul(monkeypatch)
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 12, 10, 8)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 8, 4)) * 0.1, jnp.float32)
  _, (_, dw16) = _loss_and_gradients(conv.conv_general_dilated, x.astype(jnp.bfloat16),
                                     w.astype(jnp.bfloat16), (1, 1), "SAME", (1, 1))
  _, (_, dw32) = _loss_and_gradients(lax.conv_general_dilated, x, w, (1, 1), "SAME",
                                     (1, 1))
  assert dw16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dw16, np.float32), dw32, rtol=0.05, atol=0.2)


def _uses_matmul_route(fn, *args) -> bool:
  return "custom_vjp_call" in str(jax.make_jaxpr(fn)(*args))


def test_route_follows_the_shape_rule_and_leaves_groups_to_lax():
  def conv_fn(**kwargs):
    return lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                                  dimension_numbers=CHANNELS_LAST, **kwargs)
  wide = conv.MAX_INPUT_CHANNELS_FOR_KXK + 1
  small, large = jnp.zeros((1, 8, 8, 4)), jnp.zeros((1, 4, 4, wide))
  side = int(np.ceil(np.sqrt(conv.MIN_POSITIONS_FOR_KXK)))
  many_positions = jax.ShapeDtypeStruct((1, side, side, 4), jnp.float32)
  assert _uses_matmul_route(conv_fn(), small, jnp.zeros((1, 1, 4, 4)))  # 1x1 always
  assert _uses_matmul_route(conv_fn(), large, jnp.zeros((1, 1, wide, 4)))
  assert not _uses_matmul_route(conv_fn(), small, jnp.zeros((3, 3, 4, 4)))  # few positions
  assert _uses_matmul_route(conv_fn(), many_positions, jnp.zeros((3, 3, 4, 4)))
  assert not _uses_matmul_route(  # many positions, too many channels
      conv_fn(), jax.ShapeDtypeStruct((1, side, side, wide), jnp.float32),
      jnp.zeros((3, 3, wide, 4)))
  narrow = conv.MIN_CHANNELS_FOR_KXK  # few positions but enough channels both sides
  assert _uses_matmul_route(conv_fn(), jnp.zeros((1, 8, 8, narrow)),
                            jnp.zeros((3, 3, narrow, narrow)))
  assert not _uses_matmul_route(conv_fn(), jnp.zeros((1, 8, 8, narrow)),
                                jnp.zeros((3, 3, narrow, narrow - 1)))
  assert not _uses_matmul_route(  # stride 2: a quarter of the positions
      lambda x, w: conv.conv_general_dilated(x, w, (2, 2), "SAME",
                                             dimension_numbers=CHANNELS_LAST),
      many_positions, jnp.zeros((3, 3, 4, 4)))
  # depthwise (groups), input dilation, other layouts: plain lax
  assert not _uses_matmul_route(conv_fn(feature_group_count=4), small,
                                jnp.zeros((3, 3, 1, 4)))
  assert not _uses_matmul_route(
      lambda x, w: conv.conv_general_dilated(x, w, (1, 1), ((0, 0), (0, 0)),
                                             lhs_dilation=(2, 2),
                                             dimension_numbers=CHANNELS_LAST),
      small, jnp.zeros((1, 1, 4, 4)))
  assert not _uses_matmul_route(
      lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                             dimension_numbers=("NCHW", "OIHW", "NCHW")),
      jnp.zeros((1, 4, 8, 8)), jnp.zeros((4, 4, 1, 1)))


def test_flax_conv_keeps_its_parameters_and_output():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 3))
  ours, theirs = conv.Conv(4, (3, 3), strides=2), nn.Conv(4, (3, 3), strides=2)
  params = theirs.init(jax.random.PRNGKey(1), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x))
          == jax.tree.map(jnp.shape, params))
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-6)


def test_xla_kernel_gradients_turns_the_route_off_and_back_on():
  def conv_fn():  # a new function each time: JAX caches traces by function
    return lambda x, w: conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                                  dimension_numbers=CHANNELS_LAST)
  args = (jnp.zeros((1, 8, 8, 4)), jnp.zeros((1, 1, 4, 4)))
  with conv.xla_kernel_gradients():
    assert not _uses_matmul_route(conv_fn(), *args)
  assert _uses_matmul_route(conv_fn(), *args)
