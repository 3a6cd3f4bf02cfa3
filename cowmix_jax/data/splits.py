"""Labelled subsets: chosen by seed (optionally class-balanced) or read from a file.

Split files are plain text (one image id per line) or JSON (a list of ids, or an object
with an ``"ids"`` list); never pickles, which run code when loaded.

Command line (on a prepared or preparable dataset)::

  python -m cowmix_jax.data.splits generate --dataset=camvid --manual_dir=DIR \\
      --num=30 --seed=0 [--class_balanced] --output=camvid_30_seed0.json
  python -m cowmix_jax.data.splits inspect FILE --dataset=camvid --manual_dir=DIR
  python -m cowmix_jax.data.splits compare FILE_A FILE_B
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from etils import epath

from cowmix_jax import cli
from cowmix_jax.conventions import IGNORE_LABEL
from cowmix_jax.data.base import IMAGE_SUFFIXES


def read_ids_and_histograms(builder, split: str) -> tuple[list[str], np.ndarray]:
  """Image ids of a split and their label histograms ``[N, C + 1]`` (ignore last).

  Reads only the small features (images and labels stay encoded).
  """
  import tensorflow_datasets as tfds  # local: the CLI's compare needs no TensorFlow

  dataset = builder.as_dataset(split=split, shuffle_files=False, decoders={
      "image": tfds.decode.SkipDecoding(), "label": tfds.decode.SkipDecoding()})
  dataset = dataset.map(lambda ex: (ex["image_id"], ex["label_histogram"]))
  ids, histograms = [], []
  for image_id, histogram in tfds.as_numpy(dataset):
    ids.append(image_id.decode())
    histograms.append(histogram)
  order = np.argsort(ids)  # a fixed order, whatever the file layout
  return [ids[i] for i in order], np.stack(histograms)[order]


def check_num_labelled(num_labelled: int, available: int) -> None:
  """``config.data.num_labelled`` must be -1 (all) or 1..``available``."""
  if num_labelled != -1 and not 0 < num_labelled <= available:
    raise ValueError(f"config.data.num_labelled={num_labelled}: must be -1 (all) or "
                     f"between 1 and the {available} training images available")


def choose_labelled(image_ids: Sequence[str], num_labelled: int, seed: int,
                    histograms: np.ndarray | None = None,
                    class_balanced: bool = False) -> list[str]:
  """A seeded random choice of ``num_labelled`` ids (all of them for -1), sorted.

  ``class_balanced`` picks, in turn, an image that shows the class present in the
  fewest chosen images so far (rarest overall first), drawing candidates in the seeded
  random order; it needs ``histograms [N, C + 1]``.
  """
  available = len(image_ids)
  check_num_labelled(num_labelled, available)
  if num_labelled == -1:
    return sorted(image_ids)
  order = np.random.default_rng([seed, 1]).permutation(available)
  if not class_balanced:
    return sorted(image_ids[i] for i in order[:num_labelled])
  if histograms is None:
    raise ValueError("class-balanced choice needs the label histograms")
  return sorted(image_ids[i] for i in _balanced_order(order, histograms[:, :-1] > 0,
                                                      num_labelled))


def _balanced_order(order: np.ndarray, present: np.ndarray, count: int) -> list[int]:
  """Greedy class-balanced choice; ``present [N, C]`` says which classes each image shows."""
  num_classes = present.shape[1]
  rank = np.empty(num_classes, np.int64)
  rank[np.argsort(present.sum(axis=0), kind="stable")] = np.arange(num_classes)
  queues = [[int(i) for i in order if present[i, c]] for c in range(num_classes)]
  heads = [0] * num_classes
  taken = np.zeros(len(order), bool)
  covered = np.zeros(num_classes, np.int64)
  chosen: list[int] = []
  while len(chosen) < count:
    pick = None
    for class_id in sorted(range(num_classes), key=lambda c: (covered[c], rank[c])):
      queue = queues[class_id]
      while heads[class_id] < len(queue) and taken[queue[heads[class_id]]]:
        heads[class_id] += 1
      if heads[class_id] < len(queue):
        pick = queue[heads[class_id]]
        break
    if pick is None:  # every class is exhausted: fill in the random order
      pick = int(next(i for i in order if not taken[i]))
    taken[pick] = True
    covered += present[pick]
    chosen.append(pick)
  return chosen


# Endings of image file names that are not part of the image's id: Cityscapes names its
# images <city>_<sequence>_<frame>_leftImg8bit.png, and its ids are <city>_<sequence>_<frame>.
IMAGE_NAME_ENDINGS = ("_leftImg8bit",)


def id_of_line(line: str) -> str:
  """The image id a line of an id file names: the line itself, or, for the path lines of
  the field's split files (UniMatch, U2PL, CPS: ``JPEGImages/2007_000733.jpg
  SegmentationClass/2007_000733.png``, ``leftImg8bit/train/jena/jena_000000_000019_
  leftImg8bit.png gtFine/...``), the first path's file name without its directory, image
  extension and dataset ending."""
  first = line.split()[0]
  stem, extension = os.path.splitext(first.rsplit("/", 1)[-1])
  if "/" not in first and extension.lower() not in IMAGE_SUFFIXES:
    return first
  for ending in IMAGE_NAME_ENDINGS:
    if stem.endswith(ending):
      stem = stem[:-len(ending)]
  return stem


def read_id_file(path: str) -> list[str]:
  """Ids from a text file (one per line, ``#`` comments; lines may be the image-label path
  pairs of the field's split files, see :func:`id_of_line`) or a JSON list /
  ``{"ids": [...]}``."""
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f"labelled id file {path!r} does not exist")
  text = epath.Path(path).read_text()
  if str(path).endswith(".json"):
    try:
      content = json.loads(text)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path}: not valid JSON ({error})") from error
    ids = content.get("ids") if isinstance(content, dict) else content
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
      raise ValueError(f"{path}: expected a JSON list of image id strings or an object "
                       f"with an 'ids' list")
  else:
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [id_of_line(line) for line in lines if line]
  duplicates = sorted({i for i in ids if ids.count(i) > 1})
  if duplicates:
    raise ValueError(f"{path}: ids listed more than once: {duplicates[:10]}")
  if not ids:
    raise ValueError(f"{path}: no image ids")
  return ids


def write_id_file(path: str, ids: Sequence[str], **info) -> None:
  """Writes ``{"ids": [...], **info}`` as JSON (or one id per line for ``.txt``); any
  path ``etils.epath`` serves (``gs://`` included)."""
  if str(path).endswith(".txt"):
    text = "".join(f"{i}\n" for i in ids)
  else:
    text = json.dumps({"ids": list(ids), **info}, indent=1)
  epath.Path(path).write_text(text)


def check_ids_exist(ids: Sequence[str], available: Sequence[str], source: str) -> None:
  missing = sorted(set(ids) - set(available))
  if missing:
    raise ValueError(f"{source}: {len(missing)} id(s) are not in the training split, e.g. "
                     f"{missing[:5]}")


def histogram_table(histograms: np.ndarray, class_names: Sequence[str]) -> str:
  """Per-class pixel share and image count of a subset; ``histograms [N, C + 1]``."""
  totals = histograms.sum(axis=0)
  labelled = max(int(totals[:-1].sum()), 1)
  lines = [f"{'class':<16}{'pixels %':>10}{'images':>8}"]
  for class_id, name in enumerate(class_names):
    lines.append(f"{name:<16}{100 * totals[class_id] / labelled:>10.2f}"
                 f"{int(np.sum(histograms[:, class_id] > 0)):>8}")
  lines.append(f"{'(ignored ' + str(IGNORE_LABEL) + ')':<16}"
               f"{100 * totals[-1] / max(int(totals.sum()), 1):>10.2f}   of all pixels")
  return "\n".join(lines)


def compare(a: Sequence[str], b: Sequence[str]) -> dict[str, object]:
  common = sorted(set(a) & set(b))
  return {"identical": set(a) == set(b), "size_a": len(a), "size_b": len(b),
          "common": len(common), "only_a": sorted(set(a) - set(b)),
          "only_b": sorted(set(b) - set(a))}


FLAGS = cli.new_flags()
flags.DEFINE_string("dataset", None, "generate, inspect: camvid, cityscapes, pascal, folder, "
                    "synthetic", flag_values=FLAGS)
flags.DEFINE_string("manual_dir", "", "the dataset's directory", flag_values=FLAGS)
flags.DEFINE_string("data_dir", "", "where prepared datasets are", flag_values=FLAGS)
flags.DEFINE_string("builder_config", "", "a builder variant (Cityscapes)", flag_values=FLAGS)
flags.DEFINE_string("split", "train", "the split the ids are of", flag_values=FLAGS)
flags.DEFINE_integer("num", None, "generate: how many labelled images", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "generate: the seed of the draw", flag_values=FLAGS)
flags.DEFINE_boolean("class_balanced", False, "generate: show every class as evenly as "
                     "possible", flag_values=FLAGS)
flags.DEFINE_string("output", None, "generate: the file to write (.json or .txt); inspect: "
                    "write the file's ids here when every id exists", flag_values=FLAGS)

# The positional arguments of each command (after the command's name).
COMMANDS = {"generate": (), "inspect": ("FILE",), "compare": ("FILE_A", "FILE_B")}
REQUIRED = {"generate": ("dataset", "num", "output"), "inspect": ("dataset",), "compare": ()}


def _command(positional: list[str]) -> tuple[str, list[str]]:
  """The command and its arguments, checked against COMMANDS and REQUIRED."""
  if not positional or positional[0] not in COMMANDS:
    raise app.UsageError(f"expected a command, one of {sorted(COMMANDS)}; got "
                         f"{positional[:1] or 'none'}")
  command, arguments = positional[0], positional[1:]
  if len(arguments) != len(COMMANDS[command]):
    raise app.UsageError(f"{command} takes {' '.join(COMMANDS[command]) or 'no arguments'}; "
                         f"got {arguments}")
  missing = [f"--{name}" for name in REQUIRED[command] if FLAGS[name].value is None]
  if missing:
    raise app.UsageError(f"{command} needs {', '.join(missing)}")
  return command, arguments


def _builder_from_flags() -> object:
  from cowmix_jax import config_base
  from cowmix_jax.data import builders

  return builders.prepare(config_base.get_data_config(
      FLAGS.dataset, manual_dir=FLAGS.manual_dir, data_dir=FLAGS.data_dir,
      builder_config=FLAGS.builder_config))


def main(argv: Sequence[str] | None = None) -> int:
  """Generate, inspect and compare labelled subset files (the module docstring)."""
  command, arguments = _command(cli.parse(FLAGS, argv, __doc__))
  if command == "compare":
    result = compare(read_id_file(arguments[0]), read_id_file(arguments[1]))
    print(json.dumps(result, indent=1))
    return 0 if result["identical"] else 1
  builder = _builder_from_flags()
  ids, histograms = read_ids_and_histograms(builder, FLAGS.split)
  if command == "generate":
    chosen = choose_labelled(ids, FLAGS.num, FLAGS.seed, histograms, FLAGS.class_balanced)
    write_id_file(FLAGS.output, chosen, dataset=FLAGS.dataset, split=FLAGS.split,
                  seed=FLAGS.seed, class_balanced=FLAGS.class_balanced)
    print(f"wrote {len(chosen)} ids to {FLAGS.output}")
  else:
    chosen = read_id_file(arguments[0])
    missing = sorted(set(chosen) - set(ids))
    print(f"{arguments[0]}: {len(chosen)} ids, {len(chosen) - len(missing)} of them in "
          f"{FLAGS.dataset}/{FLAGS.split}")
    if missing:
      print(f"{len(missing)} ids are not in {FLAGS.dataset}/{FLAGS.split} (a split file "
            f"of another dataset or split?), e.g. {missing[:5]}")
      return 1
    if FLAGS.output:
      write_id_file(FLAGS.output, chosen, dataset=FLAGS.dataset, split=FLAGS.split,
                    source=os.path.abspath(arguments[0]))
      print(f"wrote {len(chosen)} ids to {FLAGS.output}")
  rows = np.stack([histograms[ids.index(i)] for i in chosen])
  print(f"{len(chosen)} labelled images of {len(ids)}:")
  print(histogram_table(rows, builder.info.metadata["class_names"]))
  return 0


if __name__ == "__main__":
  cli.run(main)
