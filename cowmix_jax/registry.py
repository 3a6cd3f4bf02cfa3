"""Named builders filled by a decorator: the one registry pattern of the package.

Each kind of pluggable part (models, perturbations, ...) owns a :class:`Registry`::

    PERTURBATIONS = Registry("config.method", "perturbations")

    @PERTURBATIONS.register("cowmix")
    def _cowmix(config):
      return Mix(...)

    PERTURBATIONS.get("cowmix")  # the builder; an unknown name raises ValueError

An unknown name is an error that quotes the config key the registry serves
(``config.method``) and lists the names there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

Builder = TypeVar("Builder", bound=Callable)


class Registry(Generic[Builder]):
  """Names -> builders of the ``what`` (plural: "perturbations") that the config key
  ``config_key`` names; both for error messages."""

  def __init__(self, config_key: str, what: str):
    self.config_key = config_key
    self.what = what
    self._builders: dict[str, Builder] = {}

  def register(self, name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder under ``name``; a name registered twice is an error
    (two parts would silently replace each other)."""

    def add(builder: Builder) -> Builder:
      if name in self._builders:
        raise ValueError(f"{self.config_key}={name!r} is registered twice")
      self._builders[name] = builder
      return builder

    return add

  def unregister(self, name: str) -> None:
    """Removes ``name`` (for tests and notebooks that register a part for a while)."""
    del self._builders[name]

  def get(self, name: str) -> Builder:
    """The builder registered under ``name``; ValueError listing the names otherwise."""
    if name not in self._builders:
      raise ValueError(f"{self.config_key}={name!r}: choose one of {self.names()} (the "
                       f"known {self.what})")
    return self._builders[name]

  def names(self) -> list[str]:
    return sorted(self._builders)

  def __contains__(self, name: str) -> bool:
    return name in self._builders

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())
