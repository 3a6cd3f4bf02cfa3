#!/bin/bash
# Runs SCRIPT once process PID has ended, only if LOG's last line is DONE (the lane
# finished rather than failed or was stopped).  Usage: after_done.sh PID LOG DONE SCRIPT
while kill -0 "$1" 2>/dev/null; do sleep 30; done
if [ "$(tail -n 1 "$2")" = "$3" ]; then exec "$4"; fi
echo "after_done: $2 did not end with '$3'; $4 not started"
