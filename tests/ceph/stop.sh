#!/usr/bin/env bash
# Stops the cluster tests/ceph/start.sh started in DIR, by the PIDs it recorded, and removes DIR
# (the OSD's block file with it).
#
#   tests/ceph/stop.sh DIR
set -uo pipefail
dir=${1:?usage: stop.sh DIR}
[ -d "$dir/run" ] || { rm -rf "$dir"; exit 0; }

pids=()
for f in "$dir"/run/osd.*.pid "$dir"/run/mon.*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    # Only a Ceph daemon of this cluster: the pid may have been reused since.
    if [ -n "$pid" ] && grep -qa -- "$dir/ceph.conf" "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    fi
done
for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]+"${pids[@]}"}"; do
        kill -0 "$pid" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
done
for pid in "${pids[@]+"${pids[@]}"}"; do
    kill -KILL "$pid" 2>/dev/null
done
rm -rf "$dir"
