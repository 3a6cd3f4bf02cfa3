"""PyTorch checkpoints -> Flax variables, saved as msgpack (no pickle on our side).

python -m cowmix_jax.models.convert --layout=torchvision_resnet --depth=50 \\
    --input=resnet50-0676ba61.pth --output=resnet50_imagenet.msgpack
python -m cowmix_jax.models.convert --layout=deeplab_v2 \\
    --input=resnet101COCO-41f33a49.pth --output=deeplab_v2_coco.msgpack [--drop_head]

PyTorch files are read with ``torch.load(weights_only=True)`` (torch is the optional
``convert`` extra). The output holds ``{"params": ..., "batch_stats": ...}`` in this
project's module layout: the encoder's variables under ``encoder`` (and, for DeepLab v2,
the ASPP under ``aspp_0`` .. ``aspp_3``).
"""

from __future__ import annotations

import argparse
import re
from typing import Dict, Mapping, Tuple

import numpy as np
from flax import serialization
from flax.traverse_util import flatten_dict, unflatten_dict

LAYOUTS = ("torchvision_resnet", "deeplab_v2")
STAGES = {f"layer{i}": f"conv{i + 1}_x" for i in range(1, 5)}


def _conv(weight: np.ndarray) -> np.ndarray:
  """PyTorch ``[out, in, kh, kw]`` -> Flax ``[kh, kw, in, out]``."""
  return np.transpose(weight, (2, 3, 1, 0))


def _flax_module_path(torch_module: str) -> Tuple[str, ...]:
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


def convert_state_dict(state_dict: Mapping[str, np.ndarray], layout: str) -> Dict:
  """A PyTorch state dict (numpy arrays) -> ``{"params": ..., "batch_stats": ...}``.

  Raises:
    ValueError listing the keys that have no place in the layout.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout {layout!r}: choose one of {LAYOUTS}")
  params, stats, unknown = {}, {}, []
  for key, value in state_dict.items():
    key = key[len("Scale."):] if key.startswith("Scale.") else key  # Hung et al.'s files
    key = key[len("module."):] if key.startswith("module.") else key  # DataParallel
    module, _, leaf = key.rpartition(".")
    if (layout == "torchvision_resnet" and module == "fc") or leaf == "num_batches_tracked":
      continue
    try:
      path = _flax_module_path(module)
    except KeyError:
      unknown.append(key)
      continue
    value = np.asarray(value, np.float32)
    is_conv = path[-1].startswith(("Conv", "stem_conv", "downsample_conv", "aspp"))
    if leaf == "weight":
      params[path + ("kernel" if is_conv else "scale",)] = _conv(value) if is_conv else value
    elif leaf == "bias":
      params[path + ("bias",)] = value
    elif leaf == "running_mean":
      stats[path + ("mean",)] = value
    elif leaf == "running_var":
      stats[path + ("var",)] = value
    else:
      unknown.append(key)
  if unknown:
    raise ValueError(f"{len(unknown)} PyTorch key(s) have no place in the {layout} layout: "
                     f"{unknown[:20]}")
  return {"params": unflatten_dict(params), "batch_stats": unflatten_dict(stats)}


def save(variables: Dict, path: str) -> None:
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(variables))


def load(path: str) -> Dict:
  with open(path, "rb") as f:
    return serialization.msgpack_restore(f.read())


def merge_pretrained(variables: Dict, pretrained: Dict, source: str = "pretrained") -> Dict:
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cowmix_jax.models.convert",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--layout", choices=LAYOUTS, required=True)
  parser.add_argument("--input", required=True, help="a PyTorch .pth file")
  parser.add_argument("--output", required=True, help="the .msgpack file to write")
  parser.add_argument("--drop_head", action="store_true",
                      help="leave out DeepLab v2's ASPP (a different number of classes)")
  args = parser.parse_args(argv)
  try:
    import torch
  except ImportError as error:
    raise SystemExit("reading PyTorch files needs torch: pip install -e '.[convert]'") from error
  state = torch.load(args.input, map_location="cpu", weights_only=True)
  state = state.get("state_dict", state) if isinstance(state, dict) else state
  variables = convert_state_dict({k: v.numpy() for k, v in state.items()}, args.layout)
  if args.drop_head:
    variables["params"] = {k: v for k, v in variables["params"].items()
                           if not k.startswith("aspp_")}
  save(variables, args.output)
  count = sum(np.size(v) for v in flatten_dict(variables["params"]).values())
  print(f"wrote {args.output}: {count:,} parameters")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
