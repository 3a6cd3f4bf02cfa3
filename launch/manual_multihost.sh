#!/usr/bin/env bash
# Any cluster without SLURM or TPU metadata: run this on each host with its own id.
#
#   launch/manual_multihost.sh COORDINATOR_HOST:PORT NUM_PROCESSES PROCESS_ID \
#       --config=configs/cityscapes.py --workdir=/shared/runs/cs --config.num_devices=-1 \
#       --config.batch_size=N --config.unlabelled_batch_size=2N --config.eval_batch_size=N
#
# N: the number of devices of all hosts together (batches are global; each device takes
# whole images). Process 0's host must be COORDINATOR_HOST and reachable on PORT from
# every host; the workdir and the dataset must be on storage every host sees. SIGTERM to
# any process makes every process save the same step and exit 0.
set -euo pipefail
coordinator=${1:?coordinator host:port}
num_processes=${2:?number of processes}
process_id=${3:?this process id}
shift 3
exec python -m cowmix_jax.main --distributed --coordinator_address="$coordinator" \
  --num_processes="$num_processes" --process_id="$process_id" "$@"
