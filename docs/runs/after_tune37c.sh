#!/bin/bash
# Second lane: the demo's candidate 3 (tune37c, seeds 0-4), then grid lane 2 (which
# runs ict35.sh after CowOut and full supervision's seeds 5-9).
cd /work/runs
while pgrep -f "scripts/tune37c.sh" >/dev/null; do sleep 10; done
/work/runs/scripts/tune37c.sh >> tune37c.log 2>&1 || exit
/work/runs/scripts/grid35_lane2.sh >> grid35_lane2.log 2>&1
