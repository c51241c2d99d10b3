#!/usr/bin/env bash
# keeld's NBD export against qemu-nbd and qemu-storage-daemon's NBD export, on the same raw
# image with O_DIRECT and io_uring on every server, through the same client (fio's nbd engine,
# libnbd). Runs are interleaved (run 1 of every server, then run 2, ...); prints every run's
# IOPS and the median per server and workload.
#
#   bash tests/bench/nbd_vs_qemu.sh [RUNS=3] [RUNTIME_SECONDS=5]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
runtime=${2:-5}
cargo build --release -q -p keel-backend --bin keeld
keeld=$PWD/target/release/keeld
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
img=$work/d.img
dd if=/dev/urandom of="$img" bs=1M count=1024 status=none
sock=$work/nbd.sock
uri="nbd+unix:///d?socket=$sock"

start_server() {
    rm -f "$sock"
    case $1 in
    keeld)
        printf '[server]\nnbd_socket = "%s"\n[[disk]]\nname = "d"\nsocket = "%s/d.vhost"\nengine = "raw"\npath = "%s"\n' \
            "$sock" "$work" "$img" >"$work/keel.toml"
        KEEL_LOG=warn "$keeld" --config "$work/keel.toml" &
        ;;
    qemu-nbd)
        qemu-nbd -f raw -t -e 16 --cache=none --aio=io_uring -x d -k "$sock" "$img" &
        ;;
    qsd)
        qemu-storage-daemon \
            --blockdev "driver=file,filename=$img,aio=io_uring,cache.direct=on,node-name=n" \
            --nbd-server "addr.type=unix,addr.path=$sock,max-connections=16" \
            --export "type=nbd,id=e,node-name=n,name=d,writable=on" &
        ;;
    esac
    pids=($!)
    for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
}

stop_server() {
    kill "${pids[0]}"
    wait "${pids[0]}" 2>/dev/null || true
    pids=()
}

# name rw bs
workloads="randread-4k:randread:4k randwrite-4k:randwrite:4k read-1m:read:1m write-1m:write:1m"
servers="keeld qemu-nbd qsd"
declare -A results
for run in $(seq "$runs"); do
    for s in $servers; do
        start_server "$s"
        for w in $workloads; do
            IFS=: read -r name rw bs <<<"$w"
            iops=$(fio --name=b --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth=32 \
                --size=1g --time_based --runtime="$runtime" --ramp_time=1 \
                --output-format=json | python3 -c \
                'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0]; print(int(j["read"]["iops"]+j["write"]["iops"]))')
            results[$s,$name]+="$iops "
            echo "run $run $s $name: $iops IOPS"
        done
        stop_server
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
printf '%-14s %10s %10s %10s %14s\n' workload keeld qemu-nbd qsd "keeld/faster"
for w in $workloads; do
    name=${w%%:*}
    k=$(echo "${results[keeld,$name]}" | median)
    n=$(echo "${results[qemu-nbd,$name]}" | median)
    q=$(echo "${results[qsd,$name]}" | median)
    best=$((n > q ? n : q))
    printf '%-14s %10s %10s %10s %14s\n' "$name" "$k" "$n" "$q" \
        "$(python3 -c "print(f'{$k/$best:.2f}x')")"
done
