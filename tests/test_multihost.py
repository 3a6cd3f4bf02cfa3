"""Two processes x two CPU devices over loopback (jax.distributed, gloo collectives)
train like one process with four devices: same global batches, same parameters."""

import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from cowmix_jax import models, train
from cowmix_jax.checkpoints import Checkpointer
from cowmix_jax.state import create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config.num_train_steps=3", "--config.checkpoint_every=0", "--config.log_every=1",
         "--config.data.image_size=32", "--config.data.num_train=16",
         "--config.data.num_validation=8", "--config.data.num_labelled=6",
         "--config.batch_size=4", "--config.unlabelled_batch_size=8",
         "--config.eval_batch_size=4", "--config.model.width=4",
         "--config.model.decoder_widths=(8,8,8,8,8,8)", "--config.confidence.mode=none",
         "--config.data.eval_canvas=(32,32)", "--config.data.augment.crop_size=(32,32)"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "cowmix_jax.main", "--config=configs/synthetic.py",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *FLAGS, *extra]


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _checksums(log):
  return {int(p): float(v) for p, v in
          re.findall(r"Final parameter checksum \(process (\d)\): ([-+.\deE]+)", log)}


def _final_params(workdir, config):
  model = models.build_model(config.model, 6)
  template = create_train_state(model, train.make_optimizer(config), jax.random.PRNGKey(0),
                                (1, 32, 32, 3))
  return Checkpointer(str(workdir)).restore(template).params


@pytest.mark.slow  # minutes of CPU: run by .ci/run after the default suite
def test_two_processes_train_like_one(tmp_path, tiny_config):
  data_dir = tmp_path / "tfds"
  single = subprocess.run(_command(tmp_path / "single", data_dir), cwd=REPO, env=_env(4),
                          capture_output=True, text=True, timeout=900)
  assert single.returncode == 0, single.stderr[-3000:]
  port = _free_port()
  processes = [subprocess.Popen(
      _command(tmp_path / "multi", data_dir, "--distributed",
               f"--coordinator_address=localhost:{port}", "--num_processes=2",
               f"--process_id={i}"),
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  logs = [p.communicate(timeout=900) for p in processes]
  for process, (_, err) in zip(processes, logs):
    assert process.returncode == 0, err[-3000:]
  assert "Process 1 of 2; 2 local of 4 global devices" in logs[1][1]
  checksums = {**_checksums(logs[0][1]), **_checksums(logs[1][1])}
  assert set(checksums) == {0, 1} and checksums[0] == checksums[1], checksums
  assert _checksums(single.stderr)[0] == pytest.approx(checksums[0], rel=1e-5)
  tiny_config.model.width = 4
  for a, b in zip(jax.tree.leaves(_final_params(tmp_path / "single", tiny_config)),
                  jax.tree.leaves(_final_params(tmp_path / "multi", tiny_config))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
