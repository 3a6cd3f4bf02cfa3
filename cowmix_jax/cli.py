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

import ast
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags

from cowmix_jax import quiet_import

VERBOSE_HELP = ("Show the traceback of an expected error and TensorFlow's start-up lines "
                "(also: COWMIX_JAX_VERBOSE=1).")


def new_flags() -> flags.FlagValues:
  """An empty set of flags with ``--help`` (and ``-h``) and ``--verbose``."""
  values = flags.FlagValues()
  flags.DEFINE_boolean("help", False, "show the usage and the flags, and exit",
                       short_name="h", flag_values=values)
  flags.DEFINE_boolean("verbose", False, VERBOSE_HELP, flag_values=values)
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
          if name not in ("help", "h", "verbose")}


def run(main: Callable[[Sequence[str] | None], int | None]) -> None:
  """Runs ``main(None)`` on the command line and exits with its status. A usage error
  is one line on stderr and status 2; another expected error (``EXPECTED_ERRORS``: a
  missing file, bad data) one line and status 1 (2 for a ``ConfigError``), or its
  traceback with ``--verbose`` or ``COWMIX_JAX_VERBOSE=1``."""
  try:
    status = main(None)
  except app.UsageError as error:
    print(f"{sys.argv[0]}: {error} (--help lists the flags)", file=sys.stderr)
    sys.exit(2)
  except EXPECTED_ERRORS as error:
    if wants_verbose(sys.argv):
      raise
    fail(error_message(error), 2 if isinstance(error, ConfigError) else 1)
  sys.exit(status or 0)


# COWMIX_JAX_VERBOSE=1 (or --verbose) shows the traceback of an expected error instead of
# its one-line message; wants_verbose(argv) says whether it was asked for.
VERBOSE_ENV = quiet_import.VERBOSE_ENV
wants_verbose = quiet_import.verbose_requested


class ConfigError(ValueError):
  """A setting that cannot work, found before any work: a usage error (status 2)."""


# Errors a user's input can cause (files, data, settings, a full disk): one line each.
EXPECTED_ERRORS = (ValueError, KeyError, OSError, ModuleNotFoundError, FloatingPointError)


def error_message(error: BaseException) -> str:
  """The error's own text: a KeyError's quoted repr (``'key'\\nDid you mean ...``, as
  ml_collections raises for an unknown config key) read back as the text it quotes; a
  config file that failed to load as one line naming ``--config``."""
  text = str(error)
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
    try:
      text = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      pass
  return config_file_message(text) or config_raised_message(text) or text.strip()


def config_raised_message(text: str) -> str | None:
  """ml_collections' "flag --config=SPEC: Error whilst parsing config file:" followed by
  the traceback of the config's ``get_config`` (a misspelt ``:choice``, a syntax error
  in a user's config) as one line: ``flag --config=SPEC: Type: message (FILE, line N)``,
  the place being the last frame of the traceback; None for other texts."""
  head, marker, rest = text.partition(" Error whilst parsing config file:")
  lines = [line for line in rest.splitlines() if line.strip()]
  if not marker or not lines or not lines[0].startswith("Traceback"):
    return None
  frames = re.findall(r'File "([^"]+)", line (\d+)', rest)
  place = f" ({frames[-1][0]}, line {frames[-1][1]})" if frames else ""
  return f"{head} {lines[-1].strip()}{place}"


def config_file_message(text: str) -> str | None:
  """ml_collections' "Configuration is not available because of an earlier failure to
  load: Failed loading config file config_config / Attempted ... [Errno 2] No such file
  or directory: 'PATH'" as ``--config=PATH: no such file or directory (...)``; None
  for other texts."""
  match = re.search(r"\[Errno \d+\] ([^:]+): '([^']*)'", text)
  if "Failed loading config file" not in text or match is None:
    return None
  reason, path = match.groups()
  return (f"--config={path}: {reason[0].lower() + reason[1:]} (relative paths are read "
          f"from the current directory, {os.getcwd()}; the shipped configs are "
          f"configs/*.py in the repository)")


def config_load_message(error: BaseException, argv: Sequence[str]) -> str | None:
  """``--config=SPEC: FILE, line N: Type: message`` for an error raised while the config
  file given by ``--config`` was imported (a syntax error, a module-level name that
  does not exist), which ml_collections lets through without naming the flag; None for
  an error raised elsewhere."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None:
    return None
  path = os.path.abspath(spec.split(":", 1)[0])
  if isinstance(error, SyntaxError) and error.filename:
    if os.path.abspath(error.filename) != path:
      return None
    return f"--config={spec}: {error.filename}, line {error.lineno}: SyntaxError: {error.msg}"
  frames = [frame for frame in traceback.extract_tb(error.__traceback__)
            if os.path.abspath(frame.filename) == path]
  if not frames:
    return None
  return (f"--config={spec}: {frames[-1].filename}, line {frames[-1].lineno}: "
          f"{type(error).__name__}: {error_message(error)}")


def config_key_message(error: BaseException, argv: Sequence[str]) -> str:
  """``--config.KEY=VALUE: no config key 'KEY' ... Did you mean ...`` for an override
  of a key the config does not have."""
  text = error_message(error)
  key = text.splitlines()[0].strip("'\"") if text else ""
  flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
               and a.split("=", 1)[0].rsplit(".", 1)[-1] == key), f"--config...{key}")
  hint = " ".join(line.strip() for line in text.splitlines()[1:])
  return f"{flag}: the config has no key {key!r}.{' ' + hint if hint else ''}"


def quiet_closed_event_loops() -> None:
  """Drops the "Event loop is closed" unraisable errors that orbax's asyncio callbacks
  raise after a failed save (while its threads wind down and at interpreter shutdown);
  every other unraisable error still reaches the hook that was installed before."""
  previous = sys.unraisablehook
  if getattr(previous, "quiets_closed_loops", False):
    return

  def hook(unraisable) -> None:
    if (isinstance(unraisable.exc_value, RuntimeError)
        and "Event loop is closed" in str(unraisable.exc_value)):
      return
    previous(unraisable)

  hook.quiets_closed_loops = True
  sys.unraisablehook = hook


def fail(message: str, status: int) -> None:
  """Prints ``PROGRAM: message`` on stderr and exits with ``status``; the message stays
  the last thing printed (shutdown noise of the event loops a failed save left behind
  is dropped)."""
  program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "cowmix_jax"
  hint = f" (--verbose or {VERBOSE_ENV}=1 shows the traceback)" if status == 1 else ""
  print(f"{program}: {message}{hint}", file=sys.stderr, flush=True)
  quiet_closed_event_loops()
  sys.exit(status)


HELP_FLAGS = ("--help", "-h", "--helpshort", "-?")


def own_flags_help() -> str:
  """The flags that this package's modules define on absl's global flags (the tool's
  own, the shared checkpoint flags, ``--verbose``, ``--config``), formatted by absl."""
  modules = [m for m in flags.FLAGS.flags_by_module_dict()
             if "cowmix_jax" in m or m in ("__main__", sys.argv[0])]
  return "\n".join(flags.FLAGS.module_help(m) for m in sorted(modules))


def print_help(usage: str) -> None:
  """``usage`` and the tool's own flags on stdout (absl's ``--help`` shows only the
  flags of the ``__main__`` module, none under a console script, and exits with 1)."""
  try:
    print(f"{usage.strip()}\n\nFlags:\n{own_flags_help()}\n\n(--helpfull: every flag, "
          "those of the libraries too)", flush=True)
  except BrokenPipeError:  # `--help | head`: the reader left, which is no error
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_absl(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None,
             usage: str | None = None) -> None:
  """``absl.app.run(main)`` for the programs on absl's global flags (main, evaluate,
  predict), with every expected error in one line: a bad flag, an unknown config key,
  a config file that does not load, a bad setting (``ConfigError``) and
  ``app.UsageError`` exit with status 2; other ``EXPECTED_ERRORS`` (files, data, a
  failed save) with status 1. ``--verbose`` or ``COWMIX_JAX_VERBOSE=1`` lets the
  traceback through instead. ``--help`` prints ``usage`` (default: the docstring of
  ``main``'s module) and the tool's own flags, and exits with status 0."""
  argv = list(sys.argv if argv is None else argv)
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Show the traceback of an expected error, "
                      "TensorFlow's start-up lines and orbax's own error logs (also: "
                      "COWMIX_JAX_VERBOSE=1).")
  if any(arg in HELP_FLAGS for arg in argv[1:]):
    print_help(usage or sys.modules[main.__module__].__doc__ or "")
    sys.exit(0)
  verbose = wants_verbose(argv)
  if verbose:  # for the parts that read the environment (the checkpointer's logs)
    os.environ[VERBOSE_ENV] = "1"

  def report(message: str, status: int) -> None:
    """One line and ``status``; with --verbose the traceback, and the same status."""
    if verbose:
      traceback.print_exc()
      sys.exit(status)
    fail(message, status)

  def parse(args: list[str]) -> list[str]:
    try:
      return flags.FLAGS(args)
    except flags.Error as error:
      report(error_message(error), 2)
    except Exception as error:  # noqa: BLE001 (each kind below; the rest re-raised)
      raised_in_config = config_load_message(error, args)
      if raised_in_config is not None:  # the config file's own code failed to load
        report(raised_in_config, 2)
      if isinstance(error, (AttributeError, KeyError)):  # an override of a missing key
        report(config_key_message(error, args), 2)
      if isinstance(error, OSError):  # the config file does not load
        report(" ".join(error_message(error).split()), 2)
      raise

  def guarded(args: list[str]) -> int | None:
    try:
      return main(args)
    except app.UsageError as error:
      report(f"{error_message(error)} (--help lists the flags)", 2)
    except EXPECTED_ERRORS as error:
      report(error_message(error), 2 if isinstance(error, ConfigError) else 1)

  app.run(guarded, argv=argv, flags_parser=parse)
