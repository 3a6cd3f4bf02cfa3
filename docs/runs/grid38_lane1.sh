#!/bin/bash
# Issue 38, lane 1 of 2 (two runs at once; a UniMatch step costs 2.0-2.4 CowMix steps,
# FixMatch 1.1, so the lanes carry about equal work). Idempotent: rerun after a stop.
# Start it only once the Table 1 grid's four key methods have ten seeds.
. "$(dirname "$0")/grid38_common.sh"
for seed in 0 1 2 3 4; do
  $RUNNER --methods=fixmatch_box,fixmatch_cow,unimatch_cow_complementary --seeds=$seed || exit
done
echo "lane 1 done"
