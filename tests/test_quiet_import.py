"""Tests of cowmix_jax/quiet_import.py: TensorFlow's start-up lines are silenced unless
verbose output is asked for, and nothing else is."""

import os
import subprocess
import sys

import pytest

from conftest import REPO

START_UP_MARKERS = ("InitializeLog", "oneDNN")
# Imports TensorFlow through the package (as every tool does), then writes to stderr.
SCRIPT = ("import cowmix_jax.data, sys; print('after the import', file=sys.stderr); "
          "print(type(cowmix_jax.data.tf.constant(1)).__name__)")


def _import_tensorflow(**env) -> subprocess.CompletedProcess:
  return _python(SCRIPT, **env)


def _python(script: str, **env) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, **env))


def test_tensorflow_imports_without_its_start_up_lines_and_stderr_comes_back():
  quiet = _import_tensorflow(COWMIX_JAX_VERBOSE="0")
  assert quiet.returncode == 0, quiet.stderr
  assert not [m for m in START_UP_MARKERS if m in quiet.stderr], quiet.stderr
  assert quiet.stderr.strip() == "after the import"  # stderr works again afterwards
  assert quiet.stdout.strip() == "EagerTensor"  # TensorFlow itself works


def test_verbose_output_keeps_them():
  """The lines exist on this machine (so the quiet test could fail), and
  COWMIX_JAX_VERBOSE=1 shows them."""
  verbose = _import_tensorflow(COWMIX_JAX_VERBOSE="1")
  assert verbose.returncode == 0, verbose.stderr
  assert any(m in verbose.stderr for m in START_UP_MARKERS), verbose.stderr


# Starts JAX's backends with absl's INFO logging on, as the command-line tools run.
BACKEND_SCRIPT = ("import cowmix_jax, jax, sys; from absl import logging; "
                  "logging.use_absl_handler(); logging.set_verbosity(logging.INFO); "
                  "jax.devices(); print('started', file=sys.stderr)")
PROBE_MARKER = "Unable to initialize backend"


def test_jaxs_backend_probes_are_silenced_unless_verbose():
  quiet = _python(BACKEND_SCRIPT, COWMIX_JAX_VERBOSE="0", JAX_PLATFORMS="")
  assert quiet.returncode == 0, quiet.stderr
  assert PROBE_MARKER not in quiet.stderr, quiet.stderr
  assert quiet.stderr.strip().endswith("started")
  verbose = _python(BACKEND_SCRIPT, COWMIX_JAX_VERBOSE="1", JAX_PLATFORMS="")
  assert verbose.returncode == 0, verbose.stderr
  if PROBE_MARKER not in verbose.stderr:
    pytest.skip("this JAX logs no failed backend probe on this machine, so the quiet "
                "run above could not have shown one")
