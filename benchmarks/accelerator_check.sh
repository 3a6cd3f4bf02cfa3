#!/usr/bin/env bash
# One check of a GPU or TPU machine, in under 5 minutes: the device; step time and
# images/s of the paper's CamVid and Pascal configs in float32 and bfloat16; model FLOP
# utilisation; peak device memory; input fed / fixed; and whether the device agrees with
# the CPU on a fixed batch (cow masks, one train step).
#
#   pip install -e . && bash benchmarks/accelerator_check.sh [--output=check.json]
#   bash benchmarks/accelerator_check.sh --tiny     # toy sizes: a CPU runs it in minutes
#
# CamVid's fed / fixed reads $COWMIX_CAMVID_DIR (or --camvid_manual_dir=DIR), and is skipped
# without it; Pascal's uses a stand-in VOC tree it writes to a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
"$python" -c 'import jax; print("JAX devices:", jax.devices())'
exec "$python" -m benchmarks.accelerator_check "$@"
