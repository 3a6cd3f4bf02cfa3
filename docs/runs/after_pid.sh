#!/bin/bash
# Runs SCRIPT once process PID has ended (a lane's runner left running when its script
# was replaced).  Usage: after_pid.sh PID SCRIPT
while kill -0 "$1" 2>/dev/null; do sleep 30; done
exec "$2"
