"""Tests of the scripts in benchmarks/ that must work the first time they meet a machine
nobody here has: the accelerator check, run end to end on the CPU at toy sizes."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow  # about 4 minutes of compiling tiny steps on 2 cores
def test_accelerator_check_runs_end_to_end_at_toy_sizes(tmp_path):
  output = tmp_path / "check.json"
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHON=sys.executable)
  out = subprocess.run(["bash", "benchmarks/accelerator_check.sh", "--tiny", "--steps=1",
                        "--camvid_dir=", f"--output={output}"], cwd=REPO, env=env,
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
  assert results["fed_over_fixed"]["camvid"] is None  # --camvid_dir= skips it
  assert results["fed_over_fixed"]["pascal"] > 0
  # The "device" is the CPU itself: the same program on the same backend agrees exactly.
  assert results["mask_pixels_differing_from_cpu"] == 0
  assert results["loss_relative_difference"] == 0
  assert results["update_relative_difference"] == 0
  assert "Against the CPU on a fixed batch" in out.stdout
