#!/usr/bin/env bash
# A mirror with a remote leg against the same mirror with two local legs: guest write and read
# IOPS and p99 latency through the same client (blk_bench, libblkio), on a 256 MiB raw mirror
# with the defaults (O_DIRECT). The remote leg is a qemu-nbd export or a second keeld's NBD
# export of a file on this host (a unix socket: the NBD round trip without a network). Runs
# are interleaved (run 1 of every setup, then run 2, ...); prints a table of medians and the
# JSON of every run.
#
#   bash tests/bench/mirror_remote.sh [RUNS=3] [RUNTIME_SECONDS=5]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
runtime=${2:-5}
cargo build --release -q -p keel-backend --bin keeld --bin keel -p keel-tests --bin blk_bench
keeld=$PWD/target/release/keeld
keel=$PWD/target/release/keel
bb=$PWD/target/release/blk_bench
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start() { # $1 = setup: local | qemu-nbd | keeld-nbd
    rm -rf "$work/s" && mkdir -p "$work/s"
    local s=$work/s leg
    truncate -s 256M "$s/b.img"
    case $1 in
    local) leg="$s/b.img" ;;
    qemu-nbd)
        qemu-nbd -f raw -t --cache=none --aio=io_uring -x d -k "$s/nbd.sock" "$s/b.img" &
        pids+=($!)
        leg="nbd+unix:///d?socket=$s/nbd.sock"
        ;;
    keeld-nbd)
        printf '[server]\nnbd_socket = "%s"\n[[disk]]\nname = "d"\nsocket = "%s"\nengine = "raw"\npath = "%s"\n' \
            "$s/nbd.sock" "$s/d.sock" "$s/b.img" >"$s/remote.toml"
        KEEL_LOG=warn "$keeld" --config "$s/remote.toml" &
        pids+=($!)
        leg="nbd+unix:///d?socket=$s/nbd.sock"
        ;;
    esac
    if [ "$1" != local ]; then
        for _ in $(seq 200); do [ -S "$s/nbd.sock" ] && break; sleep 0.05; done
    fi
    printf '[server]\ncontrol_socket = "%s"\n[[disk]]\nname = "m"\nsocket = "%s"\nengine = "raw"\nmirror = ["%s", "%s"]\nsize = "256M"\n' \
        "$s/keel.sock" "$s/m.sock" "$s/a.img" "$leg" >"$s/keel.toml"
    KEEL_LOG=warn "$keeld" --config "$s/keel.toml" &
    pids+=($!)
    for _ in $(seq 200); do [ -S "$s/m.sock" ] && break; sleep 0.05; done
    # A remote leg new to this host gets a full first copy: measure once both are in sync.
    for _ in $(seq 600); do
        if "$keel" --control "$s/keel.sock" mirror status m --json | python3 -c \
            'import json,sys; s=json.load(sys.stdin); sys.exit(0 if all(c["state"]=="in_sync" for c in s["components"]) else 1)'; then
            break
        fi
        sleep 0.2
    done
}

stop() { # the mirror's keeld first, so it closes cleanly while its remote leg is still there
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    pids=()
}

# name | rw | bs | iodepth
workloads=(
    "randwrite-4k-qd32|randwrite|4096|32"
    "randwrite-4k-qd1|randwrite|4096|1"
    "write-1m-qd4|write|1048576|4"
    "randread-4k-qd32|randread|4096|32"
)
setups="local qemu-nbd keeld-nbd"
declare -A iops p99
json_runs=()
for run in $(seq "$runs"); do
    for s in $setups; do
        start "$s"
        for w in "${workloads[@]}"; do
            IFS='|' read -r name rw bs qd <<<"$w"
            out=$("$bb" "$work/s/m.sock" --client blkio --rw "$rw" --bs "$bs" --iodepth "$qd" \
                --size $((256 << 20)) --runtime "$runtime" --warmup 1 --json)
            read -r i l < <(python3 -c 'import json,sys; m=json.load(sys.stdin)["result"]; print(int(m["iops"]), round(m["lat_p99_us"]))' <<<"$out")
            iops[$s,$name]+="$i "
            p99[$s,$name]+="$l "
            json_runs+=("{\"run\": $run, \"setup\": \"$s\", \"workload\": \"$name\", \"iops\": $i, \"p99_us\": $l}")
            echo "run $run $s $name: $i IOPS, p99 $l us" >&2
        done
        stop
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "Median of $runs runs of ${runtime} s; blk_bench (libblkio), 256 MiB raw mirror, $(date -u +%F)."
printf '%-18s %10s %10s %10s %10s %10s %10s %10s %10s\n' workload local "p99 us" qemu-nbd "p99 us" keeld-nbd "p99 us" "qnbd/local" "knbd/local"
for w in "${workloads[@]}"; do
    name=${w%%|*}
    l=$(echo "${iops[local,$name]}" | median); lp=$(echo "${p99[local,$name]}" | median)
    q=$(echo "${iops[qemu-nbd,$name]}" | median); qp=$(echo "${p99[qemu-nbd,$name]}" | median)
    k=$(echo "${iops[keeld-nbd,$name]}" | median); kp=$(echo "${p99[keeld-nbd,$name]}" | median)
    printf '%-18s %10s %10s %10s %10s %10s %10s %10s %10s\n' "$name" "$l" "$lp" "$q" "$qp" "$k" "$kp" \
        "$(python3 -c "print(f'{$q/max($l,1):.2f}x')")" "$(python3 -c "print(f'{$k/max($l,1):.2f}x')")"
done
echo
printf '[%s]\n' "$(IFS=,; echo "${json_runs[*]}")"
