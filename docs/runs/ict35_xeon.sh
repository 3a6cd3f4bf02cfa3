#!/bin/bash
# Issue 35 item 5, continued on the machine of 2026-12-06 (Intel Xeon; the diagnosis's
# first runs, ict35.sh, ran on an AMD EPYC machine). Runs of one code and seed do not
# repeat bit for bit across those machines (supervised seed 0's first evaluation:
# 0.204460 there, 0.202897 here), so the diagnosis continues here with its own controls:
# every comparison pairs runs of this machine only (root camvid_lite0_ict_xeon).
# The code with the authors' ICT confidence (d9869b8), 4 epochs, val only.
. "$(dirname "$0")/grid35_common.sh"
R=/work/runs
NEW="$PY -m cowmix_jax.experiments.ablation --config=/work/ict_code/configs/camvid_cpu.py --code=/work/ict_code --set=data.manual_dir=/work/shared/data/camvid --set=num_epochs=4 --root=$R/camvid_lite0_ict_xeon"
# the control, ICT as the grid runs it, and the lead from the first machine (weight 1)
$NEW --methods=supervised,ict --seeds=0,1 || exit
$NEW --methods=ict --vary="cons_weight=1" --seeds=0,1 || exit
# the other single changes
$NEW --methods=ict --vary="confidence.mode=pixel" --vary="mask.ict_alpha=0.001;1.0" --seeds=0,1 || exit
# a third seed for the control, ICT and weight 1
$NEW --methods=supervised,ict --seeds=2 || exit
$NEW --methods=ict --vary="cons_weight=1" --seeds=2 || exit
echo "ict35_xeon done"
