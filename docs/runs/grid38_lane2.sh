#!/bin/bash
# Issue 38, lane 2 of 2: see grid38_lane1.sh.
. "$(dirname "$0")/grid38_common.sh"
for seed in 0 1 2 3 4; do
  $RUNNER --methods=unimatch_box,unimatch_cow --seeds=$seed || exit
done
echo "lane 2 done"
