#!/usr/bin/env bash
# keel-client against libblkio on the same server: the same load loop (blk_bench, one thread per
# queue, a fixed number of requests in flight) through either client library, the two clients
# alternating run by run. Servers: keeld (null engine, raw engine on an image with O_DIRECT) and
# qemu-storage-daemon (null-co, file with io_uring and O_DIRECT), each with two queues.
# Prints a markdown table of medians per (server, workload, completion mode), then the load
# average. With PIN=1 (default) the server runs on CPU 0 and the client on CPU 1, so the two
# clients meet the same scheduling on a small machine.
#
#   bash tests/bench/client_vs_blkio.sh [RUNTIME_S (3)] [REPEATS (3)]
#   SERVERS="keeld-null qsd-null" MODES=poll bash tests/bench/client_vs_blkio.sh 2 3
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNTIME=${1:-3}
REPEATS=${2:-3}
SERVERS=${SERVERS:-keeld-null keeld-raw qsd-null qsd-file}
MODES=${MODES:-interrupt poll}
PIN=${PIN:-1}
command -v jq >/dev/null || { echo "jq not found" >&2; exit 1; }
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon not found" >&2; exit 1; }
cargo build --release --quiet -p keel-backend --bin keeld -p keel-tests --bin blk_bench
KEELD=$PWD/target/release/keeld
BB=$PWD/target/release/blk_bench
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

SERVER_CPU=(); CLIENT_CPU=()
if [ "$PIN" = 1 ]; then SERVER_CPU=(taskset -c 0); CLIENT_CPU=(taskset -c 1); fi

start_server() { # $1 = server name
    rm -f "$WORK/sock"
    case $1 in
        keeld-null | keeld-raw)
            local disk='engine = "null"
size = 1073741824'
            [ "$1" = keeld-raw ] && disk="engine = \"raw\"
path = \"$WORK/disk.img\"
direct = true"
            printf '[[disk]]\nname = "b"\nsocket = "%s"\nqueues = 2\n%s\n' "$WORK/sock" "$disk" >"$WORK/keeld.toml"
            KEEL_LOG=warn "${SERVER_CPU[@]}" "$KEELD" --config "$WORK/keeld.toml" >"$WORK/server.log" 2>&1 &
            ;;
        qsd-null | qsd-file)
            local bd="driver=null-co,node-name=disk,size=1073741824,read-zeroes=on"
            [ "$1" = qsd-file ] && bd="driver=file,filename=$WORK/disk.img,aio=io_uring,cache.direct=on,node-name=disk"
            "${SERVER_CPU[@]}" qemu-storage-daemon --blockdev "$bd" \
                --export "type=vhost-user-blk,id=e,node-name=disk,addr.type=unix,addr.path=$WORK/sock,writable=on,num-queues=2" \
                >"$WORK/server.log" 2>&1 &
            ;;
        *) echo "unknown server $1" >&2; exit 1 ;;
    esac
    SERVER_PID=$! # taskset execs the server: this is the server's pid
    for _ in $(seq 200); do [ -S "$WORK/sock" ] && break; sleep 0.05; done
    [ -S "$WORK/sock" ] || { echo "$1 did not start:" >&2; cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.2
}
stop_server() { kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# name | rw | bs | iodepth | queues
WORKLOADS=(
    "randread 4k qd1|randread|4096|1|1"
    "randread 4k qd32|randread|4096|32|1"
    "randread 4k qd32 x2|randread|4096|32|2"
    "randwrite 4k qd32|randwrite|4096|32|1"
    "read 128k qd8|read|131072|8|1"
)

if [[ " $SERVERS " == *" keeld-raw "* || " $SERVERS " == *" qsd-file "* ]]; then
    # Allocated, not sparse, so reads hit real blocks.
    dd if=/dev/urandom of="$WORK/disk.img" bs=1M count=1024 oflag=direct status=none
fi

echo "Median of $REPEATS runs of ${RUNTIME} s per client, clients alternating; blk_bench, --size 1G, $(date -u +%F)."
echo
echo "| server | workload | completions | keel-client IOPS | blkio IOPS | keel/blkio | keel-client p50 us | blkio p50 us | keel-client p99 us | blkio p99 us |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
loads=()
for server in $SERVERS; do
    start_server "$server"
    for w in "${WORKLOADS[@]}"; do
        IFS='|' read -r name rw bs depth queues <<<"$w"
        for mode in $MODES; do
            pollarg=(); [ "$mode" = poll ] && pollarg=(--poll)
            declare -A iops=() p50=() p99=()
            for _ in $(seq "$REPEATS"); do
                for client in keel blkio; do
                    j=$("${CLIENT_CPU[@]}" "$BB" "$WORK/sock" --client "$client" --rw "$rw" --bs "$bs" --iodepth "$depth" \
                        --queues "$queues" --runtime "$RUNTIME" --size $((1 << 30)) "${pollarg[@]}" --json)
                    iops[$client]+="$(jq '.result.iops' <<<"$j") "
                    p50[$client]+="$(jq '.result.lat_p50_us' <<<"$j") "
                    p99[$client]+="$(jq '.result.lat_p99_us' <<<"$j") "
                done
            done
            med() { tr ' ' '\n' <<<"$1" | grep . | median; }
            ki=$(med "${iops[keel]}"); bi=$(med "${iops[blkio]}")
            printf "| %s | %s | %s | %.0f | %.0f | %.2f | %.1f | %.1f | %.0f | %.0f |\n" "$server" "$name" "$mode" \
                "$ki" "$bi" "$(echo "$ki / $bi" | bc -l)" \
                "$(med "${p50[keel]}")" "$(med "${p50[blkio]}")" "$(med "${p99[keel]}")" "$(med "${p99[blkio]}")"
            unset iops p50 p99
        done
    done
    loads+=("$server: $(cut -d' ' -f1-3 /proc/loadavg)")
    stop_server
done
echo
echo "Load average (1/5/15 min) after each server: ${loads[*]}"
