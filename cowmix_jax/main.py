"""Train a segmentation network, semi-supervised (CowMix unless the config says otherwise).

  python -m cowmix_jax.main --config=configs/synthetic.py --workdir=workdirs/synthetic
  cowmix-train --config=configs/synthetic.py --workdir=workdirs/supervised \\
      --config.method=supervised --config.seed=1

Any config key is overridden with --config.KEY=VALUE, nested keys with dots
(--config.data.num_labelled=100, --config.mask.cow_sigma_range="(4, 16)"); a config file
may take an argument after a colon (--config=configs/pascal.py:deeplab_v2). A positive
num_epochs sets the length and wins over num_train_steps (eval_every_epochs over
eval_every): overriding the step count of such a config is refused with the fix.
docs/CONFIG.md lists every key. Run the same command again to resume.

Multi-host: add ``--distributed`` (or set ``COWMIX_DISTRIBUTED=1``) on every process.
``jax.distributed.initialize`` then finds the coordinator, the process count and id on
SLURM and Cloud TPU VMs; elsewhere give ``--coordinator_address``, ``--num_processes``
and ``--process_id``. On CPUs the processes talk through gloo collectives.
"""

import ast
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from cowmix_jax import cli, config_checks, mixing, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for results, logs and checkpoints.")
flags.DEFINE_bool("distributed", os.environ.get("COWMIX_DISTRIBUTED", "") == "1",
                  "Initialise jax.distributed (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (when not "
                    "auto-detected).")
flags.DEFINE_integer("num_processes", None, "Number of processes (when not auto-detected).")
flags.DEFINE_integer("process_id", None, "This process's id (when not auto-detected).")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> None:
  """``jax.distributed.initialize`` with gloo CPU collectives when JAX runs on CPUs."""
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                             num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info("Process %d of %d; %d local of %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  config_checks.check_overrides_take_effect(
      FLAGS.config, config_flags.get_override_values(FLAGS["config"]))
  if FLAGS.distributed:
    initialize_distributed()
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")


def config_summaries(directory: str = CONFIGS_DIR) -> list[str]:
  """``configs/NAME.py: the first sentence of its docstring`` for every config file of
  the repository (read, not run); empty when the package is installed without them."""
  if not os.path.isdir(directory):
    return []
  lines = []
  for name in sorted(os.listdir(directory)):
    if name.endswith(".py") and not name.startswith("_"):
      with open(os.path.join(directory, name)) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
      paragraph = " ".join(doc.split("\n\n")[0].split())
      lines.append(f"  configs/{name}: {paragraph.split('. ')[0].rstrip('.')}.")
  return lines


def usage() -> str:
  """``--help``: the docstring, the configs and the methods."""
  configs = config_summaries() or ["  (the configs/ folder of the source repository)"]
  methods = ", ".join(mixing.PERTURBATIONS.names())
  return "\n".join([__doc__.strip(), "", "Configs:", *configs, "",
                    f"Methods (--config.method=...): {methods}."])


def run() -> None:
  """The ``cowmix-train`` console script: ``python -m cowmix_jax.main``."""
  cli.run_absl(main, usage=usage())


if __name__ == "__main__":
  run()
