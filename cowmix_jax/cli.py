"""Command lines of the tools, with absl flags like ``main.py``, ``evaluate.py`` and
``predict.py``.

Each tool defines its flags on its own :class:`absl.flags.FlagValues` (made by
:func:`new_flags`): tools imported into one process, as the tests do, would otherwise
clash over names such as ``--results``. Its ``main(argv)`` parses with :func:`parse`,
so it can be called with a list of arguments; ``if __name__ == "__main__":
cli.run(main)`` runs it on the command line::

  FLAGS = cli.new_flags()
  flags.DEFINE_string("root", None, "directory of the runs", flag_values=FLAGS)
  flags.mark_flag_as_required("root", flag_values=FLAGS)

  def main(argv=None):
    positional = cli.parse(FLAGS, argv, __doc__)
    ...
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from absl import app, flags


def new_flags() -> flags.FlagValues:
  """An empty set of flags with ``--help`` (and ``-h``)."""
  values = flags.FlagValues()
  flags.DEFINE_boolean("help", False, "show the usage and the flags, and exit",
                       short_name="h", flag_values=values)
  return values


def parse(values: flags.FlagValues, argv: Sequence[str] | None, usage: str) -> list[str]:
  """Parses ``argv`` (the arguments after the program name; None: ``sys.argv[1:]``) into
  ``values`` from a clean slate, so flags it does not give take their defaults.

  Returns:
    the positional arguments.
  Raises:
    app.UsageError: naming the flag, for an unknown flag, a bad value or a required flag
      left out. ``--help`` prints ``usage`` and the flags and exits with status 0.
  """
  values.unparse_flags()
  arguments = list(sys.argv[1:] if argv is None else argv)
  wants_help = "--help" in arguments or "-h" in arguments
  try:
    positional = values([sys.argv[0], *arguments])[1:]
  except flags.Error as error:
    if not wants_help:
      raise app.UsageError(str(error)) from None
    positional = []
  if wants_help:
    print(f"{usage.strip()}\n\nFlags:\n{values.get_help()}")
    raise SystemExit(0)
  return positional


def settings(values: flags.FlagValues) -> dict:
  """``{name: value}`` of every flag but ``--help`` (to record with a result)."""
  return {name: value for name, value in values.flag_values_dict().items()
          if name not in ("help", "h")}


def run(main: Callable[[Sequence[str] | None], int | None]) -> None:
  """Runs ``main(None)`` on the command line and exits with its status; a usage error
  is one line on stderr and status 2, not a traceback."""
  try:
    status = main(None)
  except app.UsageError as error:
    print(f"{sys.argv[0]}: {error} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)
  sys.exit(status or 0)
