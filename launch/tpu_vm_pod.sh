#!/usr/bin/env bash
# A Cloud TPU VM pod slice: the same command on every worker; jax.distributed.initialize
# finds the coordinator and the process ids from the TPU metadata.
#
#   launch/tpu_vm_pod.sh TPU_NAME ZONE --config=configs/pascal.py --workdir=gs://bucket/runs/voc100 \
#       --config.batch_size=16 --config.unlabelled_batch_size=16 --config.eval_batch_size=16
#
# Batches are global, multiples of the slice's device count (16 fits 8 or 16 devices;
# the paper's 10 fits neither). A preemption notice (SIGTERM) to any worker makes every
# worker save the same step to the bucket and exit 0; rerun the command to resume.
#
# Install the project on every worker first, e.g.:
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all \
#     --command="git clone REPO cowmix_jax && pip install -e 'cowmix_jax[tpu]'"
# The dataset directory (config.data.manual_dir / data_dir) must be readable by every
# worker (a bucket or a copy on each).
set -euo pipefail
tpu=${1:?TPU name}
zone=${2:?zone}
shift 2
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd cowmix_jax && python -m cowmix_jax.main --distributed${args}"
