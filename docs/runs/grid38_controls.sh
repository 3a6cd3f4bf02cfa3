#!/bin/bash
# Issue 38's controls (not part of its side-by-side; run after it, if cow masks and
# boxes differ): cow masks that paste as much as boxes, and independent cow masks that
# paste as much as complementary ones, on the same protocol and seeds. Two lanes:
#   grid38_controls.sh fixmatch_cow_box_area,unimatch_cow_box_area
#   grid38_controls.sh unimatch_cow_always
. "$(dirname "$0")/grid38_common.sh"
for seed in 0 1 2 3 4; do
  $RUNNER --methods="${1:?columns, e.g. unimatch_cow_always}" --seeds=$seed || exit
done
echo "controls ($1) done"
