"""Tests of the scripts in benchmarks/ that must work the first time they meet a machine
nobody here has: the accelerator check, run end to end on the CPU at toy sizes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import REPO


@pytest.mark.slow  # about 4 minutes of compiling tiny steps on 2 cores
def test_accelerator_check_runs_end_to_end_at_toy_sizes(tmp_path):
  output = tmp_path / "check.json"
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHON=sys.executable)
  out = subprocess.run(["bash", "benchmarks/accelerator_check.sh", "--tiny", "--steps=1",
                        "--camvid_manual_dir=", f"--output={output}"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1500)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(output.read_text())
  assert results["device"].startswith("cpu") and results["tiny"]
  assert sorted(results["configs"]) == ["camvid_bfloat16", "camvid_float32",
                                        "pascal_bfloat16", "pascal_float32"]
  for row in results["configs"].values():
    # 1 labelled + 2 unlabelled images per step at toy size.
    assert row["images_per_second"] == pytest.approx(3 / row["seconds_per_step"])
    assert row["flops_per_step"] > 0 and 0 < row["mfu_measured"]
    assert row["mfu_datasheet"] is None  # no datasheet peak for a CPU
  assert results["peak_memory_bytes"] is None  # the CPU keeps no count
  assert results["fed_over_fixed"]["camvid"] is None  # --camvid_manual_dir= skips it
  assert results["fed_over_fixed"]["pascal"] > 0
  # The "device" is the CPU itself: the same program on the same backend agrees exactly.
  assert results["mask_pixels_differing_from_cpu"] == 0
  assert results["loss_relative_difference"] == 0
  assert results["update_relative_difference"] == 0
  assert "Against the CPU on a fixed batch" in out.stdout


def test_conv_grad_finds_every_dense_convolution_of_the_network():
  """benchmarks/conv_grad.py times the layers it reads from the network's jaxpr: every
  dense kernel of the U-Net R50 once per use (a transposed 4x4 kernel as four 2x2 ones,
  one per output phase); the count of each kernel shape must match the parameters."""
  import collections

  import jax
  import numpy as np

  from benchmarks import conv_grad
  from cowmix_jax import models

  found = conv_grad.convolutions("resnet50", batch=1, size=(64, 64))
  model = models.build_model(conv_grad.model_config("resnet50"), conv_grad.NUM_CLASSES)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             np.zeros((1, 64, 64, 3), np.float32)))["params"]
  expected = collections.Counter()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    if path[-1].key != "kernel":
      continue
    if path[-2].key.startswith("up_"):
      expected[(2, 2, *leaf.shape[2:])] += 4
    else:
      expected[tuple(leaf.shape)] += 1
  got = collections.Counter()
  for c in found:
    got[tuple(c["rhs"])] += c["count"]
  assert got == expected
  assert all(c["lhs"][0] == 1 for c in found)


def test_kernel_counters_count_the_pages_a_fresh_mapping_touches():
  """Touching one byte on each of N fresh 4 KiB pages (huge pages refused) costs at least
  N minor page faults: the counter the benchmarks use to show the allocator's work."""
  import mmap

  from benchmarks import machine

  pages = 2048
  region = mmap.mmap(-1, pages * mmap.PAGESIZE)
  if hasattr(mmap, "MADV_NOHUGEPAGE"):
    region.madvise(mmap.MADV_NOHUGEPAGE)
  _, before = machine.kernel_counters()
  for page in range(pages):
    region[page * mmap.PAGESIZE] = 1
  _, after = machine.kernel_counters()
  region.close()
  assert pages <= after - before < 2 * pages


def test_allocator_environment_names_each_variable(monkeypatch):
  from benchmarks import machine

  monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libtcmalloc_minimal.so.4")
  monkeypatch.delenv("MALLOC_CONF", raising=False)
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
  assert machine.allocator_environment() == (
      "LD_PRELOAD='/usr/lib/libtcmalloc_minimal.so.4', MALLOC_CONF='', "
      "GLIBC_TUNABLES='glibc.malloc.hugetlb=1'")


@pytest.mark.parametrize("network", ["resnet50", "lite0"])
def test_train_step_benchmark_builds_the_same_unet_in_pytorch(network, monkeypatch):
  """The PyTorch U-Net that benchmarks/train_step.py times against ours holds the same
  parameter tensors (as a multiset of sizes, BatchNorm scales and biases included) and
  produces logits of the same shape."""
  import jax
  import numpy as np
  import torch

  from benchmarks import train_step
  from cowmix_jax import models

  monkeypatch.chdir(REPO)  # paper_config reads configs/camvid.py
  size = (64, 96)
  config = train_step.paper_config(network, size)
  model = models.build_model(config.model, train_step.NUM_CLASSES)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                np.zeros((1, *size, 3), np.float32),
                                                train=False))
  ours = sorted(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
  torch_model = train_step.torch_unet(network, max(size)).eval()
  theirs = sorted(p.numel() for p in torch_model.parameters())
  assert theirs == ours
  with torch.no_grad():
    logits = torch_model(torch.zeros(1, 3, *size))
  assert tuple(logits.shape) == (1, train_step.NUM_CLASSES, *size)


def test_the_own_data_walk_writes_the_readme_layout_with_its_0_255_masks(tmp_path):
  from benchmarks import own_data_walk
  from cowmix_jax import config_base
  from cowmix_jax.data import builders

  own_data_walk.write_folder(str(tmp_path / "blobs"), size=32, labelled=2, unlabelled=1,
                             validation=1)
  builder = builders.prepare(config_base.get_data_config(
      "folder", manual_dir=str(tmp_path / "blobs"), data_dir=str(tmp_path / "tfds")))
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      "train": 2, "unlabelled": 1, "validation": 1}
  for example in tfds.as_numpy(builder.as_dataset(split="train")):
    name = example["image_id"].decode()
    mask = np.asarray(Image.open(tmp_path / "blobs" / "train" / "labels" / f"{name}.png"))
    np.testing.assert_array_equal(example["label"], (mask == 255).astype(np.uint8))
    assert 0 < (mask == 255).mean() < 1  # both classes present
  assert "cowmix_jax.main --config=configs/folder.py" in (
      own_data_walk.readme_training_command())


def test_cpu_scale_reports_the_memory_of_the_step_it_times():
  """The memory column is the timed program's: its arguments are exactly the train
  state and the batch (their bytes counted with numpy), the donated state is written
  over in place (aliased), and the peak adds the temporaries and the other outputs."""
  import jax

  from benchmarks import cpu_scale
  from cowmix_jax import models, optimizers
  from cowmix_jax.state import create_train_state

  size = (32, 32)
  config = cpu_scale.scaled_config("resnet18x0.125", "cowmix", 1, 2)
  seconds, memory = cpu_scale.measure_step(config, size, num_steps=1)
  state = create_train_state(models.build_model(config.model, cpu_scale.NUM_CLASSES),
                             optimizers.make_optimizer(config), jax.random.PRNGKey(0),
                             (1, *size, 3))
  state_bytes = sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(state))
  batch_bytes = sum(a.nbytes for a in cpu_scale.random_batch(size, 1, 2).values())
  assert seconds > 0
  assert memory["arguments"] == state_bytes + batch_bytes
  assert memory["aliased"] == state_bytes
  assert memory["outputs"] >= state_bytes
  assert memory["peak"] == (memory["arguments"] + memory["temporaries"]
                            + memory["outputs"] - memory["aliased"])


def test_cpu_scale_lite0_half_decoder_at_downscale_4_is_the_cpu_protocols_step():
  """``--encoders lite0x0.5 --downscale 4`` times the network, the cow masks and the
  strong views' blur that configs/camvid_cpu.py trains with."""
  from benchmarks import cpu_scale
  from cowmix_jax.config_base import load_config_file

  protocol = load_config_file(os.path.join(REPO, "configs", "camvid_cpu.py"))
  config = cpu_scale.scaled_config("lite0x0.5", "unimatch", 1, 2, downscale=4)
  for key in ("encoder", "encoder_variant", "decoder_widths", "freeze_bn"):
    assert config.model[key] == protocol.model[key], key
  assert tuple(config.mask.cow_sigma_range) == tuple(protocol.mask.cow_sigma_range)
  assert tuple(config.strong_blur_sigma_range) == tuple(protocol.strong_blur_sigma_range)
  unshrunk = cpu_scale.scaled_config("lite0x0.5", "unimatch", 1, 2)
  assert unshrunk.strong_blur_sigma_range[1] == 4 * protocol.strong_blur_sigma_range[1]
