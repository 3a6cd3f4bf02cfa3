#!/usr/bin/env bash
# Several processes on this machine, each with its own simulated CPU devices, talking
# over loopback (gloo CPU collectives): a rehearsal of a multi-host run on one box.
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS --config=... --workdir=...
#
# The global batch and the results do not depend on NUM_PROCESSES.
set -euo pipefail
num_processes=${1:?number of processes}
devices=${2:?simulated CPU devices per process}
shift 2
port=${COWMIX_PORT:-$((20000 + RANDOM % 10000))}
pids=()
for ((id = 0; id < num_processes; id++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    python -m cowmix_jax.main --distributed --coordinator_address="localhost:${port}" \
      --num_processes="${num_processes}" --process_id="${id}" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
