"""Convolution with a kernel gradient that XLA:CPU computes fast.

``conv_general_dilated`` is ``lax.conv_general_dilated`` (same arguments, same output,
same input gradient) whose kernel gradient, on the CPU, is computed by matrix products,
one per kernel tap: for a ``[kh, kw, in, out]`` kernel,
``dkernel[i, j] = x_shifted(i, j)^T @ dy`` with ``x_shifted(i, j)`` the input window that
tap ``(i, j)`` sees at every output position, ``[N * Ho * Wo, in]``, and ``dy`` the output
gradient ``[N * Ho * Wo, out]``. XLA:CPU computes the kernel gradient as a convolution
whose window is the whole image, which its convolution library runs at a fraction of the
matrix-product rate (``benchmarks/conv_grad.py`` measures each layer: a U-Net R50's
kernel gradients take half the time). On other platforms (``lax.platform_dependent``)
the gradient is XLA's own.

Which convolutions take the matrix-product route is decided from the kernel's shape and
the number of output positions by ``kernel_gradient_by_matmul``; the others, and every
call that is not a 2-D NHWC / HWIO convolution without input dilation and groups
(depthwise convolutions among them), are plain ``lax.conv_general_dilated``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CHANNELS_LAST = ("NHWC", "HWIO", "NHWC")

# Which kernel gradients go by matrix products, measured per layer by
# benchmarks/conv_grad.py (2-core x86 CPU; the rule picks the faster route on both tables
# of docs/DEVELOPING.md): 1x1 kernels always (the products win 1.4-13x on a U-Net R50 at
# 480x384 and tie or win on a Lite0 U-Net at 96x128). A kxk kernel with at most 256
# input channels (wider ones, the decoder's convolutions after a skip concatenation, lose
# up to 2x) where the products fill the machine: many output positions N * Ho * Wo
# (4.9x and 1.7x at 92,160 and 368,640 positions, where XLA:CPU's whole-image
# convolution gets slow), or at least 128 input and output channels (about 2x at 1,440
# and 5,760 positions). Narrow kernels at fewer positions lose (0.4-0.9x at 1,500-25,000
# positions and 32-88 channels), and their taps would only make the program larger and
# slower to compile.
MAX_INPUT_CHANNELS_FOR_KXK = 256
MIN_POSITIONS_FOR_KXK = 32768
MIN_CHANNELS_FOR_KXK = 128


_matmul_route = {"enabled": True}


@contextlib.contextmanager
def xla_kernel_gradients():
  """Within it, models trace every kernel gradient as XLA's own (the program a GPU or TPU
  runs), on the CPU too: for ``benchmarks/memory.py``'s analysis of the accelerator's
  program, and for comparisons. Only functions traced inside it are affected (``jit``
  keeps the traces it already has)."""
  previous = _matmul_route["enabled"]
  _matmul_route["enabled"] = False
  try:
    yield
  finally:
    _matmul_route["enabled"] = previous


def kernel_gradient_by_matmul(kernel_shape: Sequence[int], positions: int) -> bool:
  """Whether the gradient of a ``[kh, kw, in, out]`` kernel whose convolution has
  ``positions = N * Ho * Wo`` output positions is computed by matrix products on the
  CPU."""
  if not _matmul_route["enabled"]:
    return False
  kh, kw, channels_in = kernel_shape[:3]
  if kh == kw == 1:
    return True
  channels_out = kernel_shape[3]
  fills_the_machine = (positions >= MIN_POSITIONS_FOR_KXK
                       or min(channels_in, channels_out) >= MIN_CHANNELS_FOR_KXK)
  return channels_in <= MAX_INPUT_CHANNELS_FOR_KXK and fills_the_machine


def _is_channels_last(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  return tuple(dimension_numbers) == CHANNELS_LAST


def _explicit_padding(padding, lhs_shape, rhs_shape, strides, rhs_dilation):
  """``padding`` as ``((top, bottom), (left, right))``, strings resolved as lax does."""
  if isinstance(padding, str):
    window = [(k - 1) * d + 1 for k, d in zip(rhs_shape[:2], rhs_dilation)]
    return tuple(lax.padtype_to_pads(lhs_shape[1:3], window, strides, padding))
  return tuple(tuple(int(p) for p in pair) for pair in padding)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None) -> jax.Array:
  """``lax.conv_general_dilated`` with the kernel gradient of ``_conv_by_taps`` where
  ``kernel_gradient_by_matmul`` chooses it (2-D, NHWC / HWIO, no input dilation, one
  group); otherwise exactly ``lax.conv_general_dilated``."""
  plain = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  dense_nhwc = (lhs.ndim == 4 and _is_channels_last(dimension_numbers)
                and feature_group_count == 1 and batch_group_count == 1
                and all(d == 1 for d in (lhs_dilation or (1, 1)))
                and preferred_element_type is None)
  if not dense_nhwc:
    return plain(lhs, rhs)
  strides = tuple(int(s) for s in window_strides)
  dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
  pads = _explicit_padding(padding, lhs.shape, rhs.shape, strides, dilation)
  positions = math.prod(jax.eval_shape(plain, lhs, rhs).shape[:3])  # N * Ho * Wo
  if not kernel_gradient_by_matmul(rhs.shape, positions):
    return plain(lhs, rhs)
  return _conv_by_taps(lhs, rhs, strides, pads, dilation, precision)


def _conv(x, w, strides, pads, dilation, precision):
  return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                  dimension_numbers=CHANNELS_LAST, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_by_taps(x, w, strides, pads, dilation, precision):
  """The convolution ``[N, H, W, in] * [kh, kw, in, out] -> [N, Ho, Wo, out]``."""
  return _conv(x, w, strides, pads, dilation, precision)


def _conv_by_taps_forward(x, w, strides, pads, dilation, precision):
  return _conv(x, w, strides, pads, dilation, precision), (x, w)


def _conv_by_taps_backward(strides, pads, dilation, precision, residuals, dy):
  x, w = residuals

  def by_taps(x, w, dy):
    _, input_vjp = jax.vjp(lambda x_: _conv(x_, w, strides, pads, dilation, precision), x)
    (dx,) = input_vjp(dy)
    dw = kernel_gradient(x, dy, w.shape[:2], strides, pads, dilation, precision)
    return dx, dw.astype(w.dtype)

  def by_xla(x, w, dy):
    _, vjp = jax.vjp(lambda x_, w_: _conv(x_, w_, strides, pads, dilation, precision),
                     x, w)
    return vjp(dy)

  return lax.platform_dependent(x, w, dy, cpu=by_taps, default=by_xla)


_conv_by_taps.defvjp(_conv_by_taps_forward, _conv_by_taps_backward)


def kernel_gradient(x: jax.Array, dy: jax.Array, kernel_size: Sequence[int],
                    strides: Sequence[int], pads, dilation: Sequence[int],
                    precision=None) -> jax.Array:
  """The gradient of a convolution's kernel, one matrix product per tap.

  Args:
    x: the input ``[N, H, W, in]``.
    dy: the gradient of the output ``[N, Ho, Wo, out]``.
    kernel_size: ``(kh, kw)``; strides, dilation: ``(sh, sw)``, ``(dh, dw)``;
      pads: ``((top, bottom), (left, right))``.

  Returns:
    ``[kh, kw, in, out]`` in float32 (the products accumulate in float32).
  """
  n, _, _, channels_in = x.shape
  _, out_h, out_w, channels_out = dy.shape
  (top, bottom), (left, right) = pads
  padded = lax.pad(x, jnp.zeros((), x.dtype),
                   ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
  dy_rows = dy.reshape(n * out_h * out_w, channels_out)
  taps = []
  for i in range(kernel_size[0]):
    for j in range(kernel_size[1]):
      row0, col0 = i * dilation[0], j * dilation[1]
      window = lax.slice(
          padded, (0, row0, col0, 0),
          (n, row0 + (out_h - 1) * strides[0] + 1, col0 + (out_w - 1) * strides[1] + 1,
           channels_in),
          (1, strides[0], strides[1], 1))
      taps.append(lax.dot_general(
          window.reshape(n * out_h * out_w, channels_in), dy_rows,
          (((0,), (0,)), ((), ())), precision=precision,
          preferred_element_type=jnp.float32))
  return jnp.stack(taps).reshape(*kernel_size, channels_in, channels_out)


# nn.Conv with this module's convolution: the same module, parameters and names.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
