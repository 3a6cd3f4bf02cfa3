#!/bin/bash
# Issue 35, lane 2 of 2: see grid35_lane1.sh (the lanes list disjoint runs).
# 2026-12-06 00:00: the reruns of seeds 0-2 come before ICT's diagnosis (the ten-seed
# test scores of the four key methods are the headline); the 24-epoch study moved to
# grid35_24ep.sh (last, if the budget allows).
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/grid35_common.sh"
R=/work/runs
$RUNNER --root=$R/camvid_lite0_rerun --methods=all_labels --seeds=0 || exit
# P1: seeds 5-9 of CowOut and full supervision, val and test
for seed in 5 6 7 8 9; do
  $RUNNER --root=$R/camvid_lite0 --methods=cowout,all_labels --seeds=$seed || exit
done
# P2: reruns of seeds 0-2 on this machine, val and test (lane 1 reruns seeds 3-4)
for seed in 0 1 2; do
  $RUNNER --root=$R/camvid_lite0_rerun --methods=cowout,all_labels --seeds=$seed || exit
done
# ICT's diagnosis (item 5), 4 epochs, val only
# 2026-12-06: the rest of the diagnosis runs on this machine with its own controls
"$HERE/ict35_xeon.sh" || exit
# P3: CutMix (fixed area) at the common length, seeds 0-2 (lane 1 runs seeds 3-4)
$RUNNER --root=$R/camvid_lite0_common --set=num_epochs=12 --methods=cutmix --seeds=0,1,2 || exit
echo "lane 2 done"
