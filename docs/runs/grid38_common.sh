# Sourced by the issue-38 grid scripts: the frozen code (a worktree of the commit the
# side-by-side starts from: git worktree add --detach /work/grid38_code COMMIT), tcmalloc,
# the runner's flags. The CPU-scale CamVid protocol of the Table 1 grid, 12 epochs, seeds
# 0-4 (the same labelled subsets), val and test; reference rows: the Table 1 grid's
# supervised, CowMix, CowOut and all-labels runs of camvid_lite0_rerun (docs/runs/README.md
# says how the two codes' runs relate).
cd /work/main
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
PY=/work/main/.venv/bin/python
RUNNER="$PY -m cowmix_jax.experiments.ablation --config=/work/grid38_code/configs/camvid_cpu.py --code=/work/grid38_code --epoch_scale=0.04 --eval_splits=test --set=data.manual_dir=/work/shared/data/camvid --root=/work/runs/camvid_lite0_strong"
