"""Which methods read which config settings: the settings only some methods use.

A command-line override of a setting the run's method does not read would change
nothing, silently; ``config_checks`` refuses it and the grid runner leaves such a
``--set`` out of the runs whose method does not read it. Pure Python (no JAX), so the
runner imports it cheaply.
"""

from __future__ import annotations

MEAN_TEACHER_METHODS = ("aug", "ict", "cutout", "cutmix", "cowout", "cowmix")
STRONG_VIEW_METHODS = ("fixmatch", "unimatch")
_COW_READERS = ("cowout", "cowmix", "fixmatch:cow", "unimatch:cow")
_BOX_READERS = ("fixmatch:box", "unimatch:box")
# The settings only some methods read, and who reads them: a method name, or
# ``method:cow`` / ``method:box`` (with that config.mask.mix), or ``method:mixed`` (only
# without config.mask.complementary, whose views are always mixed). A key (or a prefix
# ending in a dot) not listed here is read by every method.
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "cons_weight": MEAN_TEACHER_METHODS,
    "consistency_loss": MEAN_TEACHER_METHODS,
    "confidence.": MEAN_TEACHER_METHODS,
    "aug_consistency.": ("aug",),
    "mask.ict_alpha": ("ict",),
    "mask.cutout_p_range": ("cutout",),
    "mask.cutmix_p_range": ("cutmix",),
    "mask.cowout_p_range": ("cowout",),
    "mask.cowmix_p_range": ("cowmix", "fixmatch:cow", "unimatch:cow"),
    "mask.cow_sigma_range": _COW_READERS,
    "mask.cow_canvas_margin_sigmas": _COW_READERS,
    "mask.exact_proportion": _COW_READERS,
    "mask.box_area_range": _BOX_READERS,
    "mask.box_aspect_range": _BOX_READERS,
    "mask.mix": STRONG_VIEW_METHODS,
    "pseudo_label_threshold": STRONG_VIEW_METHODS,
    "strong_blur_sigma_range": STRONG_VIEW_METHODS,
    "mask.mix_probability": ("fixmatch", "unimatch:mixed"),
    "mask.complementary": ("unimatch",),
}


# Settings that do one job in each family of methods: an override of one that the run's
# method does not read names the other when the method reads that.
COUNTERPARTS = {"confidence.threshold": "pseudo_label_threshold",
                "pseudo_label_threshold": "confidence.threshold"}


def _reads(reader: str, method: str, mix: str, complementary: bool) -> bool:
  name, _, condition = reader.partition(":")
  if name != method:
    return False
  if condition == "mixed":
    return not complementary
  return not condition or condition == mix


def key_readers(key: str) -> tuple[str, ...] | None:
  """``METHOD_KEYS``' readers of ``key`` (a dotted config key); None when every method
  reads it."""
  for listed, readers in METHOD_KEYS.items():
    if key == listed or (listed.endswith(".") and key.startswith(listed)):
      return readers
  return None


def reads_key(key: str, method: str, mix: str = "box", complementary: bool = False) -> bool:
  """Whether ``config.method=method`` (with ``config.mask.mix`` and
  ``config.mask.complementary``) reads ``key`` at all."""
  readers = key_readers(key)
  return readers is None or any(_reads(r, method, mix, complementary) for r in readers)


def readers_text(key: str) -> str:
  """``key``'s readers in words: ``cowmix, fixmatch with mask.mix=cow``."""
  words = {"cow": "with mask.mix=cow", "box": "with mask.mix=box",
           "mixed": "without mask.complementary"}
  return ", ".join(f"{name} {words[condition]}" if condition else name
                   for name, _, condition in (r.partition(":") for r in key_readers(key)))


METHODS = ("supervised", *MEAN_TEACHER_METHODS, *STRONG_VIEW_METHODS)



def describe(method: str, mix: str = "box", complementary: bool = False) -> str:
  """The method as a log line names it: ``cowmix``; a strong-view method with its mask
  kind, ``unimatch with cow masks, complementary``."""
  if method not in STRONG_VIEW_METHODS:
    return method
  return (f"{method} with {mix} masks" if mix in ("box", "cow") else method) + (
      ", complementary" if complementary and method == "unimatch" else "")
