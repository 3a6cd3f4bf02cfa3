#!/bin/bash
# Issue 37 item 6, confirmation: candidate 2 (confidence.mode=pixel), chosen on seeds
# 0-4, on seeds 5-9 (CowMix only: the supervised runs of demo_synthetic are the
# baseline, and confidence.mode does not touch them). Same code and root as tune37b.sh.
cd /work/main
/work/main/.venv/bin/python -m cowmix_jax.experiments.ablation --config=/work/demo_code/configs/synthetic.py \
  --code=/work/demo_code --root=/work/runs/demo_synthetic_tune --methods=cowmix --seeds=5,6,7,8,9 \
  --vary="confidence.mode=pixel"
