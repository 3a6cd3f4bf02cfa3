"""Tests of cowmix_jax/cli.py: absl flags of the tools, parsed from a clean slate."""

import os
import subprocess
import sys
import types

import pytest
from absl import app, flags

from cowmix_jax import cli

from conftest import REPO


def _flags():
  values = cli.new_flags()
  flags.DEFINE_string("root", None, "the runs", flag_values=values)
  flags.mark_flag_as_required("root", flag_values=values)
  flags.DEFINE_multi_string("set", [], "overrides", flag_values=values)
  flags.DEFINE_integer("num", 3, "a count", flag_values=values)
  return values


def test_each_parse_starts_from_the_defaults_and_returns_the_positional_arguments():
  values = _flags()
  assert cli.parse(values, ["inspect", "--root", "a", "--set=x=1", "--set", "y=2",
                            "--num=5", "FILE"], "usage") == ["inspect", "FILE"]
  assert (values.root, values.set, values.num) == ("a", ["x=1", "y=2"], 5)
  assert cli.parse(values, ["--root=b"], "usage") == []
  assert (values.root, values.set, values.num) == ("b", [], 3)
  assert cli.settings(values) == {"root": "b", "set": [], "num": 3}


@pytest.mark.parametrize("argv,message", [
    (["--root=a", "--num=many"], "--num=many"),
    ([], "--root"),
    (["--root=a", "--nmu=4"], "Unknown command line flag 'nmu'"),
])
def test_a_bad_command_line_is_a_usage_error_naming_the_flag(argv, message):
  with pytest.raises(app.UsageError, match=message):
    cli.parse(_flags(), argv, "usage")


def test_help_prints_the_usage_and_the_flags_even_without_required_ones(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.parse(_flags(), ["--help"], "Usage: tool --root=DIR")
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("Usage: tool --root=DIR") and "--root: the runs" in out


def test_a_tool_ends_a_usage_error_with_one_line_and_status_2():
  out = subprocess.run([sys.executable, "-m", "cowmix_jax.data.splits", "shuffle"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  last = out.stderr.strip().splitlines()[-1]
  assert "expected a command, one of ['compare', 'generate', 'inspect']" in last
  assert "Traceback" not in out.stderr


def test_a_tool_ends_a_missing_file_with_its_own_line_and_status_1(tmp_path):
  """Every tool run by ``cli.run`` (here splits' compare, which needs no dataset): an
  expected error is one line naming the file, status 1; ``--verbose`` gives the
  traceback instead, with the same error at its end."""
  present, missing = tmp_path / "a.txt", tmp_path / "nowhere.txt"
  present.write_text("img_0\n")
  command = [sys.executable, "-m", "cowmix_jax.data.splits", "compare", str(present),
             str(missing)]
  env = {k: v for k, v in os.environ.items() if k != cli.VERBOSE_ENV}
  out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=env)
  assert out.returncode == 1, out.stderr
  assert "Traceback" not in out.stderr
  last = out.stderr.strip().splitlines()[-1]
  assert str(missing) in last and "--verbose" in last
  verbose = subprocess.run(command + ["--verbose"], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env=env)
  assert verbose.returncode == 1
  assert "Traceback" in verbose.stderr and str(missing) in verbose.stderr.splitlines()[-1]


def test_settings_leave_out_help_and_verbose():
  values = _flags()
  cli.parse(values, ["--root=a", "--verbose"], "usage")
  assert values.verbose and "verbose" not in cli.settings(values)


def test_the_closed_event_loop_noise_is_dropped_and_other_unraisable_errors_pass(
    monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(
      unraisable.exc_value))
  cli.quiet_closed_event_loops()
  installed = sys.unraisablehook
  cli.quiet_closed_event_loops()  # a second call does not wrap the hook again
  assert sys.unraisablehook is installed
  closed, other = RuntimeError("Event loop is closed"), ValueError("a real problem")
  for error in (closed, other):
    sys.unraisablehook(types.SimpleNamespace(exc_type=type(error), exc_value=error,
                                             exc_traceback=None, object=None))
  assert seen == [other]


@pytest.mark.parametrize("script, own_flag", [
    ("cowmix-train", "--workdir"), ("cowmix-evaluate", "--predictions_dir"),
    ("cowmix-predict", "--output_dir")])
def test_the_console_scripts_are_installed_and_print_their_own_flags(script, own_flag):
  """The install puts them beside the interpreter; absl's own --help showed none of a
  console script's flags (they are not in its __main__ module) and exited with 1."""
  path = os.path.join(os.path.dirname(sys.executable), script)
  assert os.path.exists(path), f"{script} is not installed (pip install -e .)"
  out = subprocess.run([path, "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"  {own_flag}:" in out.stdout and "--[no]verbose:" in out.stdout


def test_a_missing_config_file_is_one_line_naming_the_flag(tmp_path):
  """Before: "Configuration is not available because of an earlier failure to load:
  Failed loading config file config_config" over four lines."""
  out = subprocess.run([sys.executable, "-m", "cowmix_jax.main", "--config=configs/nope.py",
                        f"--workdir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0 and "Traceback" not in out.stderr
  lines = out.stderr.strip().splitlines()
  assert lines[-1].startswith("main.py: --config=configs/nope.py: no such file or directory "
                              f"(relative paths are read from the current directory, "
                              f"{tmp_path};"), lines
  assert "config_config" not in out.stderr and not (tmp_path / "run").exists()
  # Other texts pass through unchanged.
  assert cli.config_file_message("[Errno 2] No such file or directory: 'x'") is None


@pytest.mark.parametrize("source, spec_suffix, expected", [
    # get_config raises: ml_collections wraps the traceback into the flag's error text
    ("import ml_collections\n\n\ndef get_config(name):\n  raise ValueError(f'no {name}')\n",
     ":unet2", "flag --config={spec}: ValueError: no unet2 ({path}, line 5)"),
    # the module does not import: the SyntaxError comes through unwrapped
    ("def get_config(:\n  pass\n", "", "--config={spec}: {path}, line 1: SyntaxError: "),
    # a module-level KeyError is the file's, not an override of a missing config key
    ("import ml_collections\nX = {}['a']\n", "", "--config={spec}: {path}, line 2: KeyError: a"),
])
def test_a_config_file_that_raises_is_one_line_naming_the_file_and_line(
    tmp_path, source, spec_suffix, expected):
  """Before: a page of traceback from absl's and ml_collections' frames, then the error."""
  path = tmp_path / "mine.py"
  path.write_text(source)
  spec = f"{path}{spec_suffix}"
  env = {k: v for k, v in os.environ.items() if k != cli.VERBOSE_ENV}
  out = subprocess.run([sys.executable, "-m", "cowmix_jax.main", f"--config={spec}",
                        f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env=env)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "main.py: " + expected.format(spec=spec, path=path)), lines
  assert not (tmp_path / "run").exists()
