#!/bin/bash
# Issue 37 item 6: candidate 3 (32 labels, per-pixel confidence) on seeds 5-9, to run
# only if it won at least 4 of seeds 0-4 (tune37c.sh). Same code, root and settings.
cd /work/main
/work/main/.venv/bin/python -m cowmix_jax.experiments.ablation --config=/work/demo_code/configs/synthetic.py \
  --code=/work/demo_code --root=/work/runs/demo_synthetic_32 --methods=supervised,cowmix --seeds=5,6,7,8,9 \
  --set=data.num_labelled=32 --set=confidence.mode=pixel
