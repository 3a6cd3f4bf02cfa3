# Sourced by the issue-35 grid scripts: the frozen code, tcmalloc, the runner's flags.
cd /work/main
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
PY=/work/main/.venv/bin/python
RUNNER="$PY -m cowmix_jax.experiments.ablation --config=/work/grid_code/configs/camvid_cpu.py --code=/work/grid_code --epoch_scale=0.04 --eval_splits=test --set=data.manual_dir=/work/shared/data/camvid"
