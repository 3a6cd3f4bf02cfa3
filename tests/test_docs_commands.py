"""Every command of README.md and docs/*.md, checked without running it: each module it
runs exists, each flag it gives is defined by that tool, each config file exists and each
``--config.KEY`` (``--set``, ``--vary``) names a key of that config.

Commands are read from fenced code blocks (``bash`` or unmarked), with backslash
continuations joined, from inline code that starts with ``python -m``, a console script
or a launcher script (``launch/*.sh``, ``sbatch launch/...``), and from the
docstrings of the tools and configs (the examples ``--help`` prints). Words in
capitals (``DIR``, ``KEY``, ``configs/X.py``) are placeholders and are not checked;
``[--flag=...]`` marks an optional flag, which is checked like the others.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags

from cowmix_jax import config_base

from conftest import REPO

DOCS = ["README.md", *sorted(os.path.relpath(p, REPO)
                              for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
CONSOLE_SCRIPTS = {"cowmix-train": "cowmix_jax.main", "cowmix-evaluate": "cowmix_jax.evaluate",
                   "cowmix-predict": "cowmix_jax.predict"}
# Scripts that hand their arguments to a Python tool.
SHELL_SCRIPTS = {"benchmarks/accelerator_check.sh": "benchmarks.accelerator_check",
                 "launch/local_multiprocess.sh": "cowmix_jax.main",
                 "launch/slurm_gpu.sbatch": "cowmix_jax.main",
                 "launch/tpu_vm_pod.sh": "cowmix_jax.main",
                 "launch/manual_multihost.sh": "cowmix_jax.main"}
# Tools on absl's global flags: their flags exist once main() is set up (a subprocess).
GLOBAL_FLAG_TOOLS = {
    "cowmix_jax.main": "import cowmix_jax.main",
    "cowmix_jax.evaluate": "import cowmix_jax.evaluate as m; m.define_flags()",
    "cowmix_jax.predict": "import cowmix_jax.predict as m; m.define_flags()"}
# Flags every absl tool has, and the one cli.run_absl adds.
COMMON_FLAGS = {"help", "helpfull", "helpshort", "verbose"}
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z_0-9]*\b")


@dataclasses.dataclass
class Command:
  where: str  # FILE:LINE
  module: str
  args: list[str]


# Inline code that is a command: a Python module, a console script or a launcher script.
INLINE_COMMAND = re.compile(
    r"`((?:python -m |cowmix-(?:train|evaluate|predict) |(?:sbatch |bash )?"
    r"(?:launch|benchmarks)/[\w.]+\.(?:sh|sbatch) )[^`]+)`")


def _code_lines(path: str):
  """(line number, text) of the commands in fenced blocks and inline code
  (``INLINE_COMMAND``)."""
  with open(os.path.join(REPO, path)) as f:
    lines = f.read().split("\n")
  in_block, shell, pending, start = False, False, "", 0
  for number, line in enumerate(lines, 1):
    if line.startswith("```"):
      in_block = not in_block
      shell = in_block and line.strip("`").strip() in ("", "bash", "sh", "shell")
      continue
    if in_block and shell:
      if not pending:
        start = number
      pending += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
      if not line.rstrip().endswith("\\"):
        yield start, pending
        pending = ""
    elif not in_block:
      for span in re.findall(INLINE_COMMAND, line):
        yield number, span


TOOL_FILES = sorted(os.path.relpath(p, REPO) for pattern in (
    "cowmix_jax/*.py", "cowmix_jax/*/*.py", "benchmarks/*.py", "configs/*.py")
    for p in glob.glob(os.path.join(REPO, pattern)))


def _docstring_lines(path: str):
  """(line number, text) of the command lines of a module's docstring (what ``--help``
  prints), backslash continuations joined."""
  import ast
  with open(os.path.join(REPO, path)) as f:
    doc = ast.get_docstring(ast.parse(f.read()), clean=False) or ""
  pending, start = "", 0
  for number, line in enumerate(doc.split("\n"), 2):
    stripped = line.strip()
    if not pending and not stripped.startswith(("python ", "cowmix-")):
      continue
    if not pending:
      start = number
    if stripped.endswith("\\"):
      pending += stripped.rstrip("\\").rstrip() + " "
    else:
      yield start, pending + stripped
      pending = ""


def _words(text: str) -> list[str]:
  text = text.split(" #")[0] if not text.lstrip().startswith("#") else ""
  try:
    return shlex.split(text.replace("[", " ").replace("]", " "))
  except ValueError:  # an unbalanced quote in prose
    return []


def _commands(path: str) -> list[Command]:
  found = []
  lines = _docstring_lines(path) if path.endswith(".py") else _code_lines(path)
  for number, text in lines:
    for part in re.split(r"&&|;|\|", text):
      words = [w for w in _words(part) if not re.match(r"^[A-Z_]+=", w)]  # env prefixes
      while words and words[0] in ("do", "then", "sudo", "exec", "sbatch", "bash"):
        words = words[1:]
      if not words:
        continue
      module, args = None, []
      if words[0].startswith("python") and len(words) > 2 and words[1] == "-m":
        module, args = words[2], words[3:]
      elif words[0].startswith("python") and len(words) > 1 and words[1].endswith(".py"):
        module, args = words[1][:-3].replace("/", "."), words[2:]
      elif words[0] in CONSOLE_SCRIPTS:
        module, args = CONSOLE_SCRIPTS[words[0]], words[1:]
      elif words[0] in SHELL_SCRIPTS:
        module, args = SHELL_SCRIPTS[words[0]], words[1:]
      if module is not None:
        found.append(Command(f"{path}:{number}", module, args))
  return found


ALL_COMMANDS = [c for path in DOCS + TOOL_FILES for c in _commands(path)]


def _global_tool_flags() -> dict[str, set[str]]:
  """The flags of each tool on absl's global flags, each listed by its own subprocess
  (the three cannot share one process: they define some names alike), run at once."""
  running = {}
  for module, setup in GLOBAL_FLAG_TOOLS.items():
    script = (f"import sys, json; sys.argv = ['x']; {setup}; "
              "from absl import flags; print(json.dumps(sorted(flags.FLAGS)))")
    running[module] = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
  names = {}
  for module, process in running.items():
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    names[module] = set(json.loads(out.strip().splitlines()[-1]))
  return names


@pytest.fixture(scope="module")
def tool_flags():
  """module -> the names of its flags (absl's own and --verbose included)."""
  cache = {}

  def flags_of(module: str) -> set[str]:
    if module in GLOBAL_FLAG_TOOLS and module not in cache:
      cache.update({m: names | COMMON_FLAGS for m, names in _global_tool_flags().items()})
    if module not in cache:
      values = importlib.import_module(module).FLAGS
      assert isinstance(values, flags.FlagValues)
      cache[module] = set(values) | COMMON_FLAGS
    return cache[module]

  return flags_of


def _config_keys(spec: str | None) -> set[str]:
  """The flattened keys of a config file (or of the base config when none is named:
  evaluate and predict read the run's)."""
  if spec is None:
    config = config_base.get_base_config()
    config.data = config_base.get_data_config("synthetic")
  else:
    config = config_base.load_config_file(os.path.join(REPO, spec))
  keys = set()

  def walk(tree, prefix=""):
    for key, value in tree.items():
      keys.add(prefix + key)
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}.")

  walk(config.to_dict())
  return keys


def test_the_docs_have_commands_of_every_main_tool():
  modules = {c.module for c in OWN_COMMANDS}
  assert {"cowmix_jax.main", "cowmix_jax.evaluate", "cowmix_jax.predict",
          "cowmix_jax.experiments.ablation", "cowmix_jax.data.splits"} <= modules
  assert len(OWN_COMMANDS) > 50


# Only this project's tools are checked (not ``python -m pip``, ``venv`` or ``pytest``).
OWN_PACKAGES = ("cowmix_jax", "benchmarks")
OWN_COMMANDS = [c for c in ALL_COMMANDS if c.module.split(".")[0] in OWN_PACKAGES
                and not PLACEHOLDER.search(c.module)]


def _doc_writes(where: str, path: str) -> bool:
  """Whether the doc of ``where`` writes the file ``path`` in a worked example (a code
  block that starts with ``# path``)."""
  with open(os.path.join(REPO, where.split(":")[0])) as f:
    return f"# {path}\n" in f.read()


@pytest.mark.parametrize("command", OWN_COMMANDS, ids=lambda c: f"{c.where}:{c.module}")
def test_a_documented_command_names_a_tool_its_flags_and_config_keys(command, tool_flags):
  assert importlib.util.find_spec(command.module) is not None, (
      f"{command.where}: no module {command.module}")
  defined = tool_flags(command.module)
  config_spec = None
  for arg in command.args:
    if arg.startswith("--config=") and not PLACEHOLDER.search(arg[len("--config="):]):
      config_spec = arg[len("--config="):]
      path = config_spec.split(":")[0]
      if path.endswith(".py"):
        assert (os.path.isfile(os.path.join(REPO, path)) or
                _doc_writes(command.where, path)), f"{command.where}: no {path}"
      else:
        config_spec = None  # a run's config.json
  keys = None
  for arg in command.args:
    if not arg.startswith("--") or arg == "--":
      continue
    name, _, value = arg[2:].partition("=")
    overrides = []
    if name.startswith("config."):
      overrides.append(name[len("config."):])
    elif name in ("set", "vary"):
      overrides.append(value.split("=")[0])
    else:
      flag = name[2:] if name.startswith("no") and name[2:] in defined else name
      assert flag in defined, f"{command.where}: {command.module} has no flag --{name}"
    for key in overrides:
      if PLACEHOLDER.fullmatch(key.split(".")[-1]):
        continue
      if keys is None:
        keys = (_config_keys(config_spec) if not config_spec or os.path.isfile(
            os.path.join(REPO, config_spec.split(":")[0])) else set())
        if not keys:  # a config the doc writes: its keys are the base config's
          keys = _config_keys(None)
      assert key in keys, (f"{command.where}: the config "
                           f"{config_spec or '(base)'} has no key {key!r}")
