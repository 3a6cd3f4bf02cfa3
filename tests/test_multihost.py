"""Two processes x two CPU devices over loopback (jax.distributed, gloo collectives)
train like one process with four devices: same global batches, same parameters."""

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cowmix_jax import metrics_file, models, optimizers
from cowmix_jax.checkpoints import Checkpointer
from cowmix_jax.state import create_train_state

from conftest import REPO, free_port, num_classes_of_run, tiny_flags

FLAGS = tiny_flags({"num_train_steps": "3", "checkpoint_every": "0", "log_every": "1",
                    "data.num_labelled": "6", "batch_size": "4",
                    "unlabelled_batch_size": "8"})


def _command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "cowmix_jax.main", "--config=configs/synthetic.py",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *FLAGS, *extra]


def _env(devices):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  # Without conftest's compilation cache: a process that loads its programs from the
  # cache while its peer compiles can wait past gloo's 30 s rendezvous on a loaded
  # machine (seen once).
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def _checksums(workdir):
  """``{process: parameter checksum}`` as the run recorded them in metrics.jsonl."""
  final = list(metrics_file.read_metrics(str(workdir)).values())[-1]
  return {int(name.rsplit("process", 1)[1]): value for name, value in final.items()
          if name.startswith("parameter_checksum_process")}


def _final_params(workdir, config):
  model = models.build_model(config.model, num_classes_of_run(workdir))
  template = create_train_state(model, optimizers.make_optimizer(config), jax.random.PRNGKey(0),
                                (1, 32, 32, 3))
  with Checkpointer(str(workdir)) as checkpointer:
    return checkpointer.restore(template).params


@pytest.mark.slow  # minutes of CPU: run by .ci/run after the default suite
def test_two_processes_train_like_one(tmp_path, tiny_config):
  data_dir = tmp_path / "tfds"
  single = subprocess.run(_command(tmp_path / "single", data_dir), cwd=REPO, env=_env(4),
                          capture_output=True, text=True, timeout=900)
  assert single.returncode == 0, single.stderr[-3000:]
  port = free_port()
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
  checksums = _checksums(tmp_path / "multi")
  assert set(checksums) == {0, 1} and checksums[0] == checksums[1], checksums
  assert _checksums(tmp_path / "single")[0] == pytest.approx(checksums[0], rel=1e-5)
  tiny_config.model.width = 4
  for a, b in zip(jax.tree.leaves(_final_params(tmp_path / "single", tiny_config)),
                  jax.tree.leaves(_final_params(tmp_path / "multi", tiny_config))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


_LAUNCHES = itertools.count()


def _launch_two(workdir, data_dir, *extra):
  """Two processes x two CPU devices of one run, over loopback; their output goes to
  files (a pipe nobody reads while the test waits would fill up and block them)."""
  port, launch = free_port(), next(_LAUNCHES)
  processes = []
  for i in range(2):
    log = open(workdir.parent / f"{workdir.name}-launch{launch}-process{i}.log", "w+")
    process = subprocess.Popen(
        _command(workdir, data_dir, "--distributed", f"--coordinator_address=localhost:{port}",
                 "--num_processes=2", f"--process_id={i}", *extra),
        cwd=REPO, env=_env(2), stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = log
    processes.append(process)
  return processes


def _output(process) -> str:
  process.log.seek(0)
  return process.log.read()


def _wait_all(processes, timeout=600):
  """``[(exit code, output)]``; fails (killing them) if any is still running after
  ``timeout`` seconds: a hang is the failure these tests look for."""
  deadline = time.time() + timeout
  for p in processes:
    try:
      p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in processes:
        q.kill()
      pytest.fail(f"a process was still running after {timeout} s (hung): "
                  f"{[_output(q)[-2000:] for q in processes]}")
  return [(p.returncode, _output(p)) for p in processes]


def _wait_for_step(workdir, step, processes, timeout=600):
  """Returns once process 0 has logged ``step`` in metrics.jsonl."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(p.poll() is not None for p in processes):
      pytest.fail(f"a process ended before step {step}: "
                  f"{[_output(p)[-2000:] for p in processes if p.poll() is not None]}")
    logged = [s for s, values in metrics_file.read_metrics(str(workdir)).items()
              if "loss" in values]
    if logged and max(logged) >= step:
      return
    time.sleep(0.05)
  pytest.fail(f"step {step} not reached in {timeout} s")


def _stop_steps(outcomes):
  return [int(m) for _, err in outcomes for m in re.findall(r"Stopped at step (\d+)", err)]


LONG = ["--config.num_train_steps=40", "--config.checkpoint_every=0"]


@pytest.mark.slow  # minutes of CPU: run by .ci/run after the default suite
def test_sigterm_to_some_processes_stops_all_at_one_step_and_the_run_resumes_exactly(
    tmp_path, tiny_config):
  data_dir = tmp_path / "tfds"
  # The uninterrupted run, on the same 2 x 2 devices (over 40 steps, summation-order
  # differences from a 1 x 4 run grow past any tight tolerance).
  outcomes = _wait_all(_launch_two(tmp_path / "reference", data_dir, *LONG))
  assert [code for code, _ in outcomes] == [0, 0], [err[-3000:] for _, err in outcomes]
  tiny_config.model.width = 4
  expected = _final_params(tmp_path / "reference", tiny_config)
  # SIGTERM to process 1 only; then to both, 0.3 s apart (the second may find the first
  # already stopping). Every process must stop at the same step, save it together, exit
  # 0, and the same command must then finish the run as if nothing had happened (checked
  # after the first case only: the resume does not depend on how the stop came).
  for case, (first, others) in {"one": (1, ()), "both": (0, (1,))}.items():
    workdir = tmp_path / case
    processes = _launch_two(workdir, data_dir, *LONG)
    _wait_for_step(workdir, 5, processes)
    processes[first].send_signal(signal.SIGTERM)
    for other in others:
      time.sleep(0.3)
      if processes[other].poll() is None:
        processes[other].send_signal(signal.SIGTERM)
    outcomes = _wait_all(processes)
    assert [code for code, _ in outcomes] == [0, 0], [err[-3000:] for _, err in outcomes]
    stops = _stop_steps(outcomes)
    assert len(stops) == 2 and stops[0] == stops[1] < 40, (case, stops)
    with Checkpointer(str(workdir)) as checkpointer:
      assert checkpointer.latest_step() == stops[0]
    assert not (workdir / "results.json").exists()
    if case != "one":
      continue
    outcomes = _wait_all(_launch_two(workdir, data_dir, *LONG))
    assert [code for code, _ in outcomes] == [0, 0], [err[-3000:] for _, err in outcomes]
    assert json.loads((workdir / "results.json").read_text())["step"] == 40
    for a, b in zip(jax.tree.leaves(expected),
                    jax.tree.leaves(_final_params(workdir, tiny_config))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  # A restart with a setting that cannot continue this run: every process stops with the
  # difference named, before any training; none waits for the others.
  outcomes = _wait_all(_launch_two(tmp_path / "one", data_dir, *LONG,
                                   "--config.learning_rate=0.5"), timeout=300)
  for code, err in outcomes:
    assert code != 0 and "learning_rate: 0.003 in the workdir, now 0.5" in err, err[-2000:]
