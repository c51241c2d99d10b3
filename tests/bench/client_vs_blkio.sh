#!/usr/bin/env bash
# Runs the same workloads through keel-client and through libblkio (blkio_bench) against one
# qemu-storage-daemon, alternating the two clients, and prints a markdown table of median IOPS
# and p99 latency per (backend, workload, completion mode).
#
#   bash tests/bench/client_vs_blkio.sh [RUNTIME_S] [REPEATS]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNTIME=${1:-5}
REPEATS=${2:-3}
cargo build --release --quiet -p keel-client --bin keel-client -p keel-tests --bin blkio_bench
KC=target/release/keel-client
BB=target/release/blkio_bench
WORK=$(mktemp -d)
QSD_PID=
cleanup() {
    if [ -n "$QSD_PID" ]; then kill "$QSD_PID" 2>/dev/null || true; wait "$QSD_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

start_qsd() { # $1 = blockdev spec
    rm -f "$WORK/sock"
    qemu-storage-daemon --blockdev "$1" \
        --export "type=vhost-user-blk,id=e,node-name=disk,addr.type=unix,addr.path=$WORK/sock,writable=on,num-queues=2" &
    QSD_PID=$!
    for _ in $(seq 100); do [ -S "$WORK/sock" ] && return; sleep 0.05; done
    echo "qemu-storage-daemon did not start" >&2; exit 1
}
stop_qsd() { kill "$QSD_PID"; wait "$QSD_PID" 2>/dev/null || true; QSD_PID=; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# name | rw | bs | iodepth | queues
WORKLOADS=(
    "randread 4k qd1|randread|4096|1|1"
    "randread 4k qd32|randread|4096|32|1"
    "randread 4k qd32 x2|randread|4096|32|2"
    "randwrite 4k qd32|randwrite|4096|32|1"
    "read 128k qd8|read|131072|8|1"
)

echo "| backend | workload | completions | keel-client IOPS | blkio IOPS | keel-client p99 us | blkio p99 us |"
echo "|---|---|---|---:|---:|---:|---:|"
for backend in null file; do
    if [ "$backend" = null ]; then
        start_qsd "driver=null-co,node-name=disk,size=$((4 << 30))"
    else
        truncate -s 1G "$WORK/disk.img"
        # Fill the image so reads hit allocated blocks in the page cache, not holes.
        dd if=/dev/urandom of="$WORK/disk.img" bs=1M count=1024 conv=notrunc status=none
        start_qsd "driver=file,filename=$WORK/disk.img,node-name=disk"
    fi
    for w in "${WORKLOADS[@]}"; do
        IFS='|' read -r name rw bs depth queues <<<"$w"
        for mode in interrupt poll; do
            pollarg=(); [ "$mode" = poll ] && pollarg=(--poll)
            kc_iops=(); bb_iops=(); kc_p99=(); bb_p99=()
            for _ in $(seq "$REPEATS"); do
                j=$($KC bench "$WORK/sock" --rw "$rw" --bs "$bs" --iodepth "$depth" --queues "$queues" \
                    --runtime "${RUNTIME}s" --size 1G "${pollarg[@]}" --json)
                kc_iops+=("$(jq '.iops' <<<"$j")")
                kc_p99+=("$(jq '(.read // .write).lat_p99_us' <<<"$j")")
                j=$($BB "$WORK/sock" --rw "$rw" --bs "$bs" --iodepth "$depth" --queues "$queues" \
                    --runtime-s "$RUNTIME" --size $((1 << 30)) "${pollarg[@]}" --json)
                bb_iops+=("$(jq '.iops' <<<"$j")")
                bb_p99+=("$(jq '.lat_p99_us' <<<"$j")")
            done
            printf "| %s | %s | %s | %.0f | %.0f | %.0f | %.0f |\n" "$backend" "$name" "$mode" \
                "$(printf '%s\n' "${kc_iops[@]}" | median)" "$(printf '%s\n' "${bb_iops[@]}" | median)" \
                "$(printf '%s\n' "${kc_p99[@]}" | median)" "$(printf '%s\n' "${bb_p99[@]}" | median)"
        done
    done
    stop_qsd
done
