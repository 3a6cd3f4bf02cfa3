"""TensorFlow imported without its start-up lines.

Importing TensorFlow prints, from its native code and whatever the log level, absl's
"All log messages before absl::InitializeLog() ..." warning, the oneDNN notice and the
CPU-feature notice (several of them twice). This project uses TensorFlow only for
tf.data and tensorflow-datasets, so those lines say nothing to its users. The package
installs :class:`QuietTensorFlowFinder` when it is imported; whichever module imports
TensorFlow first (ours, tensorflow-datasets or clu), the import runs with the process's
standard error (file descriptor 2) sent to the null device, and nothing else changes.
``--verbose`` on the command line or ``COWMIX_JAX_VERBOSE=1`` keeps the lines.

JAX, likewise, logs at INFO each accelerator backend it probes and does not find
("Unable to initialize backend 'tpu'"); :func:`quiet_backend_probes` keeps its backend
module's logger to warnings (a GPU without a CUDA-enabled jaxlib is still reported).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
from collections.abc import Iterator

QUIETED_MODULE = "tensorflow"
BACKEND_LOGGER = "jax._src.xla_bridge"  # JAX's backend probes
VERBOSE_ENV = "COWMIX_JAX_VERBOSE"  # the same variable as cli.VERBOSE_ENV


def verbose_requested(argv: list[str] | None = None) -> bool:
  """``--verbose`` (``=true``, ``=1``) among the arguments, or COWMIX_JAX_VERBOSE set."""
  arguments = sys.argv if argv is None else argv
  given = any(arg == "--verbose" or arg.lower() in ("--verbose=true", "--verbose=1")
              for arg in arguments)
  return given or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def native_stderr_to_null() -> Iterator[None]:
  """Sends what is written to file descriptor 2 (native code and Python alike) to the
  null device for the duration, then restores it."""
  sys.stderr.flush()
  saved = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(null, 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


class _QuietLoader(importlib.abc.Loader):
  """Runs the wrapped loader's ``exec_module`` with standard error to the null device
  (an error still raises, and its traceback prints once stderr is back)."""

  def __init__(self, loader: importlib.abc.Loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module) -> None:
    with native_stderr_to_null():
      self._loader.exec_module(module)


class QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
  """Finds ``tensorflow`` as the path finder does and hands out a quiet loader; it
  removes itself from ``sys.meta_path`` at that first import."""

  def find_spec(self, name, path, target=None):
    if name != QUIETED_MODULE:
      return None
    uninstall()
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


def install() -> None:
  """Puts the finder first in ``sys.meta_path`` unless TensorFlow is imported already,
  the user asked for verbose output, or it is installed."""
  if (QUIETED_MODULE in sys.modules or verbose_requested()
      or any(isinstance(f, QuietTensorFlowFinder) for f in sys.meta_path)):
    return
  sys.meta_path.insert(0, QuietTensorFlowFinder())


def uninstall() -> None:
  sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, QuietTensorFlowFinder)]


def quiet_backend_probes() -> None:
  """JAX's backend module logs warnings and worse only, unless verbose output was asked
  for."""
  if not verbose_requested():
    logging.getLogger(BACKEND_LOGGER).setLevel(logging.WARNING)
