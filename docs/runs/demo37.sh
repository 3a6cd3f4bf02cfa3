#!/bin/bash
# Issue 37: the synthetic demo over seeds 0-9 (supervised vs CowMix), configs/synthetic.py as shipped.
cd /work/main
/work/main/.venv/bin/python -m cowmix_jax.experiments.ablation --config=/work/demo_code/configs/synthetic.py \
  --code=/work/demo_code --root=/work/runs/demo_synthetic --methods=supervised,cowmix --seeds=0,1,2,3,4,5,6,7,8,9
