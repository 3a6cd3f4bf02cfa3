#!/bin/bash
# Issue 35, lane 1 of 2 (two runs at once). Every phase is idempotent: run the script
# again after a stop and finished runs are skipped. The two lanes never list the same
# run (the runner locks its results file, not a run's workdir). Stop: kill this script
# first, then kill -TERM the experiments.ablation process (its run checkpoints).
# Rebalanced 2026-12-05 21:00: lane 2 had twice lane 1's remaining hours.
# 2026-12-06 00:00: the 24-epoch study moved to grid35_24ep.sh (last, if the budget allows).
. "$(dirname "$0")/grid35_common.sh"
R=/work/runs
# P0: reproduction check (seed 0 ran on the live tree of 2026-11-30)
$RUNNER --root=$R/camvid_lite0_rerun --methods=supervised --seeds=0 || exit
# P1: seeds 5-9 of the key methods, val and test
for seed in 5 6 7 8 9; do
  $RUNNER --root=$R/camvid_lite0 --methods=supervised,cowmix --seeds=$seed || exit
done
# P2: reruns of seeds 0-4 on this machine, val and test (the runs recorded on the
# old machine do not reproduce bit for bit here, so all ten seeds come from here)
for seed in 0 1 2 3 4; do
  $RUNNER --root=$R/camvid_lite0_rerun --methods=supervised,cowmix --seeds=$seed || exit
done
# P2b: CowOut and full supervision reruns of seeds 3-4 (lane 2 reruns seeds 0-2)
for seed in 3 4; do
  $RUNNER --root=$R/camvid_lite0_rerun --methods=cowout,all_labels --seeds=$seed || exit
done
# (ICT at 4 epochs on the grid's code runs in ict35.sh, lane 2)
# P3b: CutMix with a random area at the common length (12 epochs), val and test
$RUNNER --root=$R/camvid_lite0_common --set=num_epochs=12 --methods=cutmix_random_area --seeds=0,1,2,3,4 || exit
# P3c: standard augmentation at the common length; CutMix (fixed area) seeds 3-4
$RUNNER --root=$R/camvid_lite0_common --set=num_epochs=12 --methods=aug --seeds=0,1,2 || exit
$RUNNER --root=$R/camvid_lite0_common --set=num_epochs=12 --methods=cutmix --seeds=3,4 || exit
echo "lane 1 done"
