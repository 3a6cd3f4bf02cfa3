"""The launch scripts as users read them, run on this machine with 2 processes x 2 CPU
devices, a tiny model and a few steps. Only the cluster's launcher is replaced: ``srun``
and ``gcloud`` by stand-ins that start the command as two local tasks with the
environment SLURM gives its tasks (which ``jax.distributed.initialize`` reads, as it
reads a TPU VM's metadata). The SLURM and TPU routes run the exact command of their
script's usage comment (its config and batch overrides), with a local workdir and data.
"""

import os
import shlex
import subprocess
import sys

import pytest
from test_data_cityscapes import write_tree as write_cityscapes
from test_data_voc import write_tree as write_voc

from cowmix_jax import metrics_file

from conftest import REPO, free_port

# A tiny network from a random initialisation (the paper configs' ImageNet ResNet-50 does
# not fit it, and their frozen BatchNorm needs pretrained weights).
TINY = ["--config.num_train_steps=2", "--config.checkpoint_every=0", "--config.log_every=1",
        "--config.eval_every=0", "--config.image_every=0", "--config.model.depth=18",
        "--config.model.width=4", "--config.model.decoder_widths=(8,8,8,8,8,8)",
        "--config.model.pretrained=none", "--config.model.freeze_bn=False"]
# Runs "$@" (or, for gcloud, the --command) as two tasks of a one-node SLURM job.
TASKS = r"""
pids=()
for id in 0 1; do
  SLURM_JOB_ID=1 SLURM_STEP_NODELIST=localhost SLURM_NTASKS=2 SLURM_PROCID=$id \
    SLURM_LOCALID=$id "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
FAKE_SRUN = "#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\n" + TASKS
FAKE_GCLOUD = ("#!/usr/bin/env bash\nfor arg; do [[ $arg == --command=* ]] && "
               "command=${arg#--command=}; done\nset -- bash -c \"$command\"\n" + TASKS)


def documented_command(script: str) -> list:
  """The ``--flag`` arguments of the usage example in ``launch/<script>``'s comment."""
  lines = open(os.path.join(REPO, "launch", script)).read().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("#   ") and script in line)
  text = ""
  for line in lines[start:]:
    text += line.lstrip("#").strip().rstrip("\\") + " "
    if not line.rstrip().endswith("\\"):
      break
  return [arg for arg in shlex.split(text) if arg.startswith("--")]


def _with_workdir(args, workdir):
  return [f"--workdir={workdir}" if a.startswith("--workdir=") else a for a in args]


def _environment(tmp_path, **extra):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for name, text in (("srun", FAKE_SRUN), ("gcloud", FAKE_GCLOUD)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  path = os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), os.environ["PATH"]])
  env = dict(os.environ, PATH=path, JAX_PLATFORMS="cpu",
             JAX_COORDINATOR_PORT=str(free_port()),
             XLA_FLAGS="--xla_force_host_platform_device_count=2", **extra)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # as in test_multihost._env
  return env


def _assert_two_processes_trained(outcome, workdir, steps=2):
  assert outcome.returncode == 0, outcome.stdout[-3000:] + outcome.stderr[-3000:]
  final = list(metrics_file.read_metrics(str(workdir)).values())[-1]
  checksums = [final.get(f"parameter_checksum_process{i}") for i in range(3)]
  assert checksums[0] is not None and checksums[0] == checksums[1] and checksums[2] is None
  assert metrics_file.read_metrics(str(workdir))[steps]["teacher_miou"] >= 0


def _run(command, cwd, env):
  return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=900)


SYNTHETIC = ["--config=configs/synthetic.py", "--config.data.image_size=32",
             "--config.data.num_train=16", "--config.data.num_validation=8",
             "--config.data.num_labelled=6", "--config.data.eval_canvas=(32,32)",
             "--config.data.augment.crop_size=(32,32)", "--config.eval_batch_size=4"]


@pytest.mark.slow  # minutes of CPU: run by .ci/run after the default suite
def test_local_multiprocess_script(tmp_path):
  env = _environment(tmp_path, COWMIX_PORT=str(free_port()))
  workdir = tmp_path / "work"
  outcome = _run(["bash", "launch/local_multiprocess.sh", "2", "2", *SYNTHETIC,
                  f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'tfds'}",
                  *TINY], REPO, env)
  _assert_two_processes_trained(outcome, workdir)


@pytest.mark.slow
def test_manual_multihost_script(tmp_path):
  env = _environment(tmp_path)
  workdir, port = tmp_path / "work", free_port()
  processes = [subprocess.Popen(
      ["bash", "launch/manual_multihost.sh", f"localhost:{port}", "2", str(i), *SYNTHETIC,
       f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'tfds'}", *TINY,
       "--config.num_devices=-1", "--config.batch_size=4", "--config.unlabelled_batch_size=8"],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errors = [p.communicate(timeout=900)[1] for p in processes]
  outcome = subprocess.CompletedProcess([], max(p.returncode for p in processes), "",
                                        "\n".join(errors))
  _assert_two_processes_trained(outcome, workdir)


def _documented_arguments(script, config, tmp_path, data_dir, size):
  """``(workdir, arguments)``: the flags of ``script``'s usage example (which must name
  ``configs/<config>.py``) with a local workdir, then a tiny model, 2 labelled images of
  the dataset in ``data_dir`` and crops of ``size``."""
  workdir = tmp_path / "work"
  args = _with_workdir(documented_command(script), workdir)
  assert f"--config=configs/{config}.py" in args
  height, width = size
  return workdir, [*args, *TINY, f"--config.data.manual_dir={data_dir}",
                   f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.num_labelled=2",
                   f"--config.data.eval_canvas=({height},{width})",
                   f"--config.data.augment.crop_size=({height},{width})"]


@pytest.mark.slow
def test_slurm_script_runs_its_documented_cityscapes_command(tmp_path):
  write_cityscapes(tmp_path / "cityscapes", size=(64, 128))
  workdir, args = _documented_arguments("slurm_gpu.sbatch", "cityscapes", tmp_path,
                                        tmp_path / "cityscapes", (64, 128))
  outcome = _run(["bash", "launch/slurm_gpu.sbatch", *args,
                  "--config.data.builder_config=full"], REPO, _environment(tmp_path))
  _assert_two_processes_trained(outcome, workdir)


@pytest.mark.slow
def test_tpu_pod_script_runs_its_documented_pascal_command(tmp_path):
  write_voc(tmp_path / "voc", size=(64, 64))
  workdir, args = _documented_arguments("tpu_vm_pod.sh", "pascal", tmp_path, tmp_path / "voc",
                                        (64, 64))
  # The script runs `cd cowmix_jax && python ...` in the worker's home directory.
  home = tmp_path / "home"
  home.mkdir()
  (home / "cowmix_jax").symlink_to(REPO)
  outcome = _run(["bash", os.path.join(REPO, "launch", "tpu_vm_pod.sh"), "tpu", "zone", *args],
                 home, _environment(tmp_path))
  _assert_two_processes_trained(outcome, workdir)
