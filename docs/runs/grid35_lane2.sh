#!/bin/bash
# Issue 35, lane 2 of 2: see grid35_lane1.sh.
. "$(dirname "$0")/grid35_common.sh"
R=/work/runs
$RUNNER --root=$R/camvid_lite0_rerun --methods=all_labels --seeds=0 || exit
for seed in 5 6 7 8 9; do
  $RUNNER --root=$R/camvid_lite0 --methods=cowout,all_labels --seeds=$seed || exit
done
# P2: reruns of seeds 0-4 on this machine, val and test (the runs recorded on the
# old machine do not reproduce bit for bit here, so all ten seeds come from here)
for seed in 0 1 2 3 4; do
  $RUNNER --root=$R/camvid_lite0_rerun --methods=cowout,all_labels --seeds=$seed || exit
done
# P3: CutMix (fixed half area) and standard augmentation at the common length, 12 epochs
$RUNNER --root=$R/camvid_lite0_common --set=num_epochs=12 --methods=cutmix --seeds=0,1,2,3,4 || exit
$RUNNER --root=$R/camvid_lite0_common --set=num_epochs=12 --methods=aug --seeds=0,1,2 || exit
$RUNNER --root=$R/camvid_lite0_24ep --epoch_scale=0.08 --continue_from=$R/camvid_lite0_rerun --methods=cowout,all_labels --seeds=0,1,2 || exit
echo "lane 2 done"
