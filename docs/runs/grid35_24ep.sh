#!/bin/bash
# Issue 35 item 4: the 24-epoch study on seeds 0-2 (0.08 of the paper's length),
# continuing the reruns of seeds 0-2. Last, and only if the budget allows: the issue's
# 20-24 run-hours were spent before it. Run the two halves as two lanes:
#   grid35_24ep.sh supervised,cowmix    and    grid35_24ep.sh cowout,all_labels
. "$(dirname "$0")/grid35_common.sh"
R=/work/runs
$RUNNER --root=$R/camvid_lite0_24ep --epoch_scale=0.08 --continue_from=$R/camvid_lite0_rerun \
  --methods="${1:?methods, e.g. supervised,cowmix}" --seeds=0,1,2 || exit
echo "24-epoch study ($1) done"
