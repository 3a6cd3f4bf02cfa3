"""What a benchmark records about the machine it ran on."""

from __future__ import annotations

import os
import platform
import resource

import jax

ALLOCATOR_VARIABLES = ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES")


def allocator_environment() -> str:
  """The variables that choose or tune the memory allocator (they decide the page
  faults of XLA:CPU's per-step temporaries), as ``NAME='value'`` pairs."""
  return ", ".join(f"{name}={os.environ.get(name, '')!r}" for name in ALLOCATOR_VARIABLES)


def describe(threads: int | None = None) -> str:
  """``'<cpu>, <n> CPU cores, JAX <version> on <platform>'``."""
  return (f"{platform.processor() or platform.machine()}, {threads or os.cpu_count()} CPU "
          f"cores, JAX {jax.__version__} on {jax.devices()[0].platform}")


def kernel_counters() -> tuple[float, int]:
  """``(system_seconds, page_faults)`` of this process so far: the kernel's CPU time
  (page faults among it) and the minor page faults."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_stime, usage.ru_minflt
