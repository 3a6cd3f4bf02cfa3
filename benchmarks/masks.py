"""Times cow-mask generation three ways, in one process, and prints the ratios.

16 masks of 321x321 with sigma ~ logU(8, 32), p = 0.5 (the Pascal setting):
  ours     this project's jitted generator (cowmix_jax.masks.cow_masks: the blurred
           noise's band of Fourier coefficients on a canvas 6 sigma_max larger than the
           image, inverted at the image's pixels by two matrix products, or by the
           canvas FFT when that is cheaper)
  scipy    a per-mask loop of scipy.ndimage.gaussian_filter (the paper's Listing 1, as
           the PyTorch implementations generate masks in their data loaders)
  separable  a jitted JAX separable convolution blur with zero padding (as in the
           authors' JAX classification code), kernel radius 4 * sigma_max

Usage: python -m benchmarks.masks [--repeats 10] [--num_masks 16] [--size 321]
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from scipy import ndimage, special

from cowmix_jax import cli, masks


def scipy_loop(rng: np.random.Generator, n: int, size: int, sigma_range, p: float) -> np.ndarray:
  """The paper's Listing 1, one mask at a time."""
  out = np.empty((n, size, size), np.float32)
  for i in range(n):
    sigma = np.exp(rng.uniform(np.log(sigma_range[0]), np.log(sigma_range[1])))
    noise = rng.normal(size=(size, size))
    smooth = ndimage.gaussian_filter(noise, sigma)
    threshold = special.erfinv(2 * p - 1) * np.sqrt(2) * smooth.std() + smooth.mean()
    out[i] = smooth <= threshold
  return out


def make_separable_generator(n: int, size: int, sigma_range, p: float):
  """Jitted cow masks blurred by a depthwise separable convolution (zero padding)."""
  radius = int(np.ceil(4 * sigma_range[1]))
  taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)

  def blur(noise, sigma):  # noise [N, H, W], sigma [N]
    kernels = jnp.exp(-0.5 * (taps[:, None] / sigma[None, :]) ** 2)
    kernels = kernels / kernels.sum(0, keepdims=True)  # [K, N]
    x = jnp.transpose(noise, (1, 2, 0))[None]  # [1, H, W, N] channels = masks
    dims = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(x, kernels[:, None, None, :], (1, 1), "SAME",
                                     dimension_numbers=dims, feature_group_count=n)
    x = jax.lax.conv_general_dilated(x, kernels[None, :, None, :], (1, 1), "SAME",
                                     dimension_numbers=dims, feature_group_count=n)
    return jnp.transpose(x[0], (2, 0, 1))

  @jax.jit
  def generate(key):
    sigma_key, noise_key = jax.random.split(key)
    sigma = masks.sample_log_uniform(sigma_key, n, sigma_range)
    smooth = blur(jax.random.normal(noise_key, (n, size, size)), sigma)
    mean, std = smooth.mean((1, 2)), smooth.std((1, 2))
    threshold = mean + std * jnp.sqrt(2.0) * jax.scipy.special.erfinv(2 * p - 1)
    return (smooth <= threshold[:, None, None]).astype(jnp.float32)

  return generate


def time_call(fn, repeats: int) -> float:
  """Median seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


FLAGS = cli.new_flags()
flags.DEFINE_integer("repeats", 10, "timed calls per method (the median is reported)",
                     flag_values=FLAGS)
flags.DEFINE_integer("num_masks", 16, "masks per call", flag_values=FLAGS)
flags.DEFINE_integer("size", 321, "mask height and width", flag_values=FLAGS)


def main(argv=None):
  cli.parse(FLAGS, argv, __doc__)
  n, size, sigma_range, p = FLAGS.num_masks, FLAGS.size, (8.0, 32.0), 0.5

  ours = jax.jit(lambda key: masks.cow_masks(key, (n, size, size), sigma_range, (p, p)))
  separable = make_separable_generator(n, size, sigma_range, p)
  key = jax.random.PRNGKey(0)
  rng = np.random.default_rng(0)
  results = {
      "ours (jit)": time_call(lambda: ours(key).block_until_ready(), FLAGS.repeats),
      "separable conv (jit)": time_call(lambda: separable(key).block_until_ready(), FLAGS.repeats),
      "scipy loop": time_call(lambda: scipy_loop(rng, n, size, sigma_range, p), FLAGS.repeats),
  }
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}")
  print(f"{n} cow masks of {size}x{size}, sigma ~ logU{sigma_range}, median of {FLAGS.repeats}")
  baseline = results["ours (jit)"]
  for name, seconds in results.items():
    print(f"  {name:<22} {1000 * seconds:9.2f} ms   {seconds / baseline:7.2f}x our time")
  print(f"Our speed-up over the scipy loop: {results['scipy loop'] / baseline:.1f}x; "
        f"over the separable convolution: {results['separable conv (jit)'] / baseline:.1f}x")


if __name__ == "__main__":
  cli.run(main)
