"""docs/CONFIG.md against cowmix_jax/config_base.py: every key named, none invented, and
each default as the code has it."""

import ast
import math
import os
import re

import pytest

from cowmix_jax import config_base

from conftest import REPO

ROW = re.compile(r"^\| `([\w.]+)` \| (.+?) \| .+\|$")
# A default the table cannot give as one value (the config file chooses it).
CONFIG_CHOSEN = "(the config's)"


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _documented_defaults() -> dict[str, str]:
  with open(os.path.join(REPO, "docs", "CONFIG.md")) as f:
    rows = [ROW.match(line.strip()) for line in f]
  return {m.group(1): m.group(2) for m in rows if m}


def _code_defaults() -> dict:
  config = config_base.get_base_config()
  config.data = config_base.get_data_config("")
  defaults = _flatten(config.to_dict())
  for settings in config_base.DATASET_SETTINGS.values():
    defaults.update({f"data.{key}": value for key, value in settings.items()})
  return defaults


def _same(documented: str, value) -> bool:
  if documented == CONFIG_CHOSEN:
    return True
  parsed = ast.literal_eval(documented.strip("`"))
  if isinstance(value, float) and isinstance(parsed, (int, float)):
    return math.isclose(parsed, value, rel_tol=1e-3)  # a rounded default (log 1.1)
  if (isinstance(value, tuple) and isinstance(parsed, tuple) and len(value) == len(parsed)
      and any(isinstance(v, float) for v in value)):  # rounded members (1 / 0.3)
    return all(_same(repr(p), v) for p, v in zip(parsed, value))
  return parsed == value and type(parsed) is type(value)


def test_config_md_names_every_key_of_the_base_config_and_no_other():
  documented, code = _documented_defaults(), _code_defaults()
  assert sorted(set(code) - set(documented)) == [], "keys missing from docs/CONFIG.md"
  assert sorted(set(documented) - set(code)) == [], "docs/CONFIG.md names unknown keys"


@pytest.mark.parametrize("key", sorted(_code_defaults()))
def test_config_md_gives_each_default_as_the_code_has_it(key):
  documented = _documented_defaults()
  assert key in documented
  assert _same(documented[key], _code_defaults()[key]), (
      f"docs/CONFIG.md: {key} default {documented[key]}, the code {_code_defaults()[key]!r}")
