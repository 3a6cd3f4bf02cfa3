"""Command line: ``python -m cowmix_jax.main --config=configs/X.py --workdir=DIR``.

Multi-host: add ``--distributed`` (or set ``COWMIX_DISTRIBUTED=1``) on every process.
``jax.distributed.initialize`` then finds the coordinator, the process count and id on
SLURM and Cloud TPU VMs; elsewhere give ``--coordinator_address``, ``--num_processes``
and ``--process_id``. On CPUs the processes talk through gloo collectives.
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from cowmix_jax import cli, train

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
  if FLAGS.distributed:
    initialize_distributed()
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  cli.run_absl(main)
