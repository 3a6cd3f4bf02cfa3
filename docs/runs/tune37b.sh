#!/bin/bash
# Issue 37 item 6, candidate 2: CowMix's stripes collapse into checks under the mean
# teacher (confusion of seeds 4-5: 33-69% of stripe pixels predicted checks, against 20%
# for the baseline), whatever the mask size (candidate 1, sigma 4-12, kept the collapse):
# confirmation bias. Candidate 2 trains only on the teacher's confident pixels
# (confidence.mode=pixel, the paper's appendix D.3.4 alternative). Seeds 0-4.
cd /work/main
/work/main/.venv/bin/python -m cowmix_jax.experiments.ablation --config=/work/demo_code/configs/synthetic.py \
  --code=/work/demo_code --root=/work/runs/demo_synthetic_tune --methods=cowmix --seeds=0,1,2,3,4 \
  --vary="confidence.mode=pixel"
