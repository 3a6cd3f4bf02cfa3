"""Distances between image patches (the paper's section 3.1 and appendix B), in JAX.

A patch is the ``P x P`` square (``P`` odd) centred on a pixel; its distance to another
is the L2 norm of the difference of their raw pixel values over every channel.

- Neighbouring patches: the squared distance between the patches centred on ``p`` and
  ``p + d`` (``d`` one pixel right or down) is the box sum, over the patch at ``p``, of
  the squared finite difference ``(I(x + d) - I(x))^2``: two separable window sums,
  whatever ``P``.
- Nearest patch in another image (appendix B.1): ``|A - Q|^2 = Q.Q + box(I^2) -
  2 corr(I, Q)`` for every patch ``A`` of an image ``I`` at once, the correlation by FFT.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cowmix_jax.conventions import IGNORE_LABEL


def check_patch_size(patch: int) -> int:
  """The half width ``(patch - 1) // 2``; ValueError unless ``patch`` is odd and >= 1."""
  if patch < 1 or patch % 2 == 0:
    raise ValueError(f"patch size {patch}: expected an odd number of pixels >= 1")
  return patch // 2


def box_sum(x: jax.Array, size: int) -> jax.Array:
  """Sums over every ``size x size`` window that fits: ``[..., H, W]`` ->
  ``[..., H - size + 1, W - size + 1]`` (window sums along rows, then columns)."""
  ones = (1,) * (x.ndim - 2)
  rows = jax.lax.reduce_window(x, 0.0, jax.lax.add, ones + (size, 1), (1,) * x.ndim, "VALID")
  return jax.lax.reduce_window(rows, 0.0, jax.lax.add, ones + (1, size), (1,) * x.ndim,
                               "VALID")


@functools.partial(jax.jit, static_argnums=1)
def neighbour_distances(image: jax.Array, patch: int) -> tuple[jax.Array, jax.Array]:
  """Distances between the patches centred on neighbouring pixels.

  Args:
    image: ``[H, W, C]`` float.
    patch: the odd patch size ``P`` (half width ``h``).

  Returns:
    ``(right, down)``: ``right[i, j]`` is the distance between the patches centred on
    ``(i + h, j + h)`` and ``(i + h, j + h + 1)``, ``[H - 2h, W - 2h - 1]``; ``down[i, j]``
    between those on ``(i + h, j + h)`` and ``(i + h + 1, j + h)``, ``[H - 2h - 1, W - 2h]``.
    Only patches wholly inside the image take part.
  """
  check_patch_size(patch)
  image = image.astype(jnp.float32)
  across = jnp.sum((image[:, 1:] - image[:, :-1]) ** 2, axis=-1)  # [H, W - 1]
  along = jnp.sum((image[1:] - image[:-1]) ** 2, axis=-1)  # [H - 1, W]
  right = jnp.sqrt(jnp.maximum(box_sum(across, patch), 0.0))
  down = jnp.sqrt(jnp.maximum(box_sum(along, patch), 0.0))
  return right, down


def average_neighbour_distance(image: jax.Array, patch: int) -> jax.Array:
  """The paper's Figure 1 map: for each pixel, the mean distance from its patch to the
  patches of its four neighbours. The image is reflected at its borders (by ``h + 1``
  pixels) so that every pixel has a value.

  Args:
    image: ``[H, W, C]`` float.

  Returns:
    ``[H, W]`` float32.
  """
  half = check_patch_size(patch)
  height, width = image.shape[:2]
  padded = jnp.pad(image, ((half + 1, half + 1), (half + 1, half + 1), (0, 0)),
                   mode="reflect")
  right, down = neighbour_distances(padded, patch)
  # right[i, j] pairs padded centres (i + h, j + h) and (i + h, j + h + 1); the image's
  # pixel (r, c) is the padded centre (r + h + 1, c + h + 1).
  to_right = right[1:height + 1, 1:width + 1]
  to_left = right[1:height + 1, 0:width]
  below = down[1:height + 1, 1:width + 1]
  above = down[0:height, 1:width + 1]
  return (to_right + to_left + below + above) / 4.0


def neighbour_pairs(image: np.ndarray, label: np.ndarray, patch: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The distances of every pair of patches centred on neighbouring pixels (right and
  down: each pair once) whose centres both have a class and whose patches are wholly
  inside the image, split by whether the two centres have the same class (Figure 5).

  Args:
    image: ``[H, W, C]``; label: ``[H, W]`` class ids, IGNORE_LABEL where unknown.

  Returns:
    ``(same_class, across_boundary)``: 1-D float arrays of distances.
  """
  half = check_patch_size(patch)
  right, down = (np.asarray(d) for d in neighbour_distances(jnp.asarray(image), patch))
  height, width = label.shape
  centre = label[half:height - half, half:width - half]
  right_labels = (centre[:, :-1], centre[:, 1:])
  down_labels = (centre[:-1], centre[1:])
  same, across = [], []
  for distances, (a, b) in ((right, right_labels), (down, down_labels)):
    valid = (a != IGNORE_LABEL) & (b != IGNORE_LABEL)
    same.append(distances[valid & (a == b)])
    across.append(distances[valid & (a != b)])
  return np.concatenate(same), np.concatenate(across)


def boundary_pairs(label: np.ndarray, patch: int) -> np.ndarray:
  """Centre pairs either side of a class boundary whose patches are wholly inside:
  ``[N, 4]`` int rows ``(row, col, neighbour row, neighbour col)`` (right and down
  neighbours), in row-major order of the first centre."""
  half = check_patch_size(patch)
  height, width = label.shape
  pairs = []
  for (dr, dc) in ((0, 1), (1, 0)):
    a = label[half:height - half - dr, half:width - half - dc]
    b = label[half + dr:height - half, half + dc:width - half]
    rows, cols = np.nonzero((a != IGNORE_LABEL) & (b != IGNORE_LABEL) & (a != b))
    rows, cols = rows + half, cols + half
    pairs.append(np.stack([rows, cols, rows + dr, cols + dc], axis=1))
  pairs = np.concatenate(pairs)
  return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def extract_patches(image: jax.Array, centres: jax.Array, patch: int) -> jax.Array:
  """``[N, P, P, C]`` patches of ``image [H, W, C]`` centred on ``centres [N, 2]`` (each
  patch wholly inside the image)."""
  half = check_patch_size(patch)
  channels = image.shape[-1]

  def one(centre):
    return jax.lax.dynamic_slice(image, (centre[0] - half, centre[1] - half, 0),
                                 (patch, patch, channels))

  return jax.vmap(one)(jnp.asarray(centres))


@jax.jit
def nearest_patch_distances(queries: jax.Array, image: jax.Array) -> jax.Array:
  """The distance from each query patch to its nearest patch of ``image`` (appendix B.1):
  ``|A - Q|^2 = Q.Q + box(I^2) - 2 corr(I, Q)`` over every patch ``A`` wholly inside
  ``image``, the correlation by FFT.

  Args:
    queries: ``[N, P, P, C]`` float patches.
    image: ``[H, W, C]`` float, ``H, W >= P``.

  Returns:
    ``[N]`` float32 distances.
  """
  queries = queries.astype(jnp.float32)
  image = image.astype(jnp.float32)
  size = queries.shape[1]
  height, width = image.shape[:2]
  own = jnp.sum(queries ** 2, axis=(1, 2, 3))  # [N]
  energy = box_sum(jnp.sum(image ** 2, axis=-1), size)  # [H - P + 1, W - P + 1]
  # corr(I, Q)[y, x] = sum_{u, v, c} I[y + u, x + v, c] Q[u, v, c]: a convolution of I
  # with the flipped Q, read where the flipped kernel lies wholly inside.
  spectrum = jnp.fft.rfft2(image, axes=(0, 1))  # [H, W // 2 + 1, C]
  kernels = jnp.fft.rfft2(queries[:, ::-1, ::-1, :], s=(height, width), axes=(1, 2))
  products = jnp.sum(spectrum[None] * kernels, axis=-1)  # [N, H, W // 2 + 1]
  full = jnp.fft.irfft2(products, s=(height, width), axes=(1, 2))  # [N, H, W]
  correlation = full[:, size - 1:, size - 1:]  # [N, H - P + 1, W - P + 1]
  squared = own[:, None, None] + energy[None] - 2.0 * correlation
  return jnp.sqrt(jnp.maximum(jnp.min(squared, axis=(1, 2)), 0.0))


# ``(queries [N, P, P, C], images [B, H, W, C]) -> [B, N]``: the search batched over
# images of one size.
nearest_patch_distances_per_image = jax.jit(jax.vmap(nearest_patch_distances,
                                                     in_axes=(None, 0)))
