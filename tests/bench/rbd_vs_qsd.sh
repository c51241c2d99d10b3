#!/usr/bin/env bash
# keeld's rbd engine against qemu-storage-daemon's rbd driver, both exporting the same RBD image
# of the same single-node cluster (tests/ceph/start.sh) over vhost-user-blk, driven by the same
# client (keel-client bench) in the same run; `rbd bench` gives the cluster's own limit. Runs are
# interleaved (run 1 of every server, then run 2, ...), the servers' order alternating from run to
# run (the later server of a run tended to measure faster); prints a table of medians and the same
# as JSON.
#
#   bash tests/bench/rbd_vs_qsd.sh [RUNS=3] [RUNTIME_SECONDS=5]
#
# KEEL_BENCH_BASELINE=/path/to/an/older/keeld adds that binary as a third server, `base`, run in
# the same rounds (before/after comparisons on a noisy machine); the table stays keeld vs qsd,
# the per-run lines name all three. KEEL_BENCH_WORKLOADS="write-1m-qd8 ..." runs only the
# workloads named (and no `rbd bench`), for focused comparisons.
#
# Both servers run with their defaults: keeld's `direct = true` turns librbd's cache off; QSD
# without cache.direct turns it on (write-through until the first flush). The last workload turns
# the device's write cache off first (keel-client --write-through, as a guest with WCE off), so
# every write must be durable when answered; it runs last because QSD keeps that setting for the
# export.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
runtime=${2:-5}
cargo build --release -q -p keel-backend --bin keeld
cargo build --release -q -p keel-client
keeld=$PWD/target/release/keeld
client=$PWD/target/release/keel-client
work=$(mktemp -d)
cluster=$work/ceph
pids=()
cleanup() {
    for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
    bash tests/ceph/stop.sh "$cluster" || true
    rm -rf "$work"
}
trap cleanup EXIT
# 4 GiB for the OSD: a 3 GiB one ran out of BlueFS space under `rbd bench` random writes after
# the runs (the OSD aborts on ENOSPC). Written in full first, so that no run pays for the file
# system allocating the OSD's blocks on first touch.
conf=$(KEEL_CEPH_BLOCK_SIZE=4G KEEL_CEPH_BLOCK_WRITTEN=1 bash tests/ceph/start.sh "$cluster" $$)
image=bench
size_mib=512
rbd -c "$conf" create --size "${size_mib}M" "rbd/$image"
# Reads of never-written objects never reach an OSD: fill the image first.
rbd -c "$conf" bench --io-type write --io-size 4M --io-threads 8 --io-total "${size_mib}M" \
    --io-pattern seq "rbd/$image" >/dev/null
sock=$work/d.sock

start_server() {
    rm -f "$sock"
    case $1 in
    keeld | base)
        printf '[[disk]]\nname = "d"\nsocket = "%s"\nengine = "rbd"\nimage = "rbd/%s"\nceph_conf = "%s"\n' \
            "$sock" "$image" "$conf" >"$work/keel.toml"
        bin=$keeld
        [ "$1" = base ] && bin=$KEEL_BENCH_BASELINE
        KEEL_LOG=warn "$bin" --config "$work/keel.toml" &
        ;;
    qsd)
        qemu-storage-daemon \
            --blockdev "driver=rbd,pool=rbd,image=$image,conf=$conf,node-name=n" \
            --export "type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=$sock,writable=on" &
        ;;
    esac
    pids=($!)
    for _ in $(seq 400); do [ -S "$sock" ] && break; sleep 0.05; done
    [ -S "$sock" ] || { echo "$1 did not start" >&2; exit 1; }
}

stop_server() {
    kill "${pids[0]}"
    wait "${pids[0]}" 2>/dev/null || true
    pids=()
}

# CPU time (user + system, clock ticks) of process $1, all threads; its threads' context switches.
ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }'; }

# name rw bs iodepth [extra client flag]
workloads="randread-4k-qd1:randread:4k:1 randwrite-4k-qd1:randwrite:4k:1 randread-4k-qd32:randread:4k:32 randwrite-4k-qd32:randwrite:4k:32 read-1m-qd8:read:1m:8 write-1m-qd8:write:1m:8 randwrite-4k-qd1-wt:randwrite:4k:1:--write-through"
if [ -n "${KEEL_BENCH_WORKLOADS:-}" ]; then
    keep=
    for w in $workloads; do
        case " $KEEL_BENCH_WORKLOADS " in *" ${w%%:*} "*) keep+="$w " ;; esac
    done
    workloads=$keep
fi
servers="keeld qsd"
[ -n "${KEEL_BENCH_BASELINE:-}" ] && servers="keeld base qsd"
declare -A iops lat cpu csw
for run in $(seq "$runs"); do
    order=$servers
    [ $((run % 2)) = 0 ] && order=$(echo "$servers" | tr ' ' '\n' | tac | tr '\n' ' ')
    for s in $order; do
        start_server "$s"
        for w in $workloads; do
            IFS=: read -r name rw bs depth flag <<<"$w"
            c0=$(cpu_ticks "${pids[0]}")
            w0=$(switches "${pids[0]}")
            read -r i l < <("$client" bench --rw "$rw" --bs "$bs" --iodepth "$depth" --queues 1 ${flag:+"$flag"} \
                --runtime "${runtime}s" --json "$sock" | python3 -c \
                'import json,sys; j=json.load(sys.stdin); o=j["read"] or j["write"]; print(int(j["iops"]), round(o["lat_mean_us"]))')
            # The server's CPU time (all its threads, librbd's included) and thread switches
            # per request: less noisy than IOPS on a shared machine.
            reqs=$((i * runtime))
            u=$(python3 -c "print(round(($(cpu_ticks "${pids[0]}") - $c0) * 1e6 / $ticks / max($reqs, 1), 1))")
            x=$(python3 -c "print(round(($(switches "${pids[0]}") - $w0) / max($reqs, 1), 2))")
            iops[$s,$name]+="$i "
            lat[$s,$name]+="$l "
            cpu[$s,$name]+="$u "
            csw[$s,$name]+="$x "
            echo "run $run $s $name: $i IOPS, mean latency $l us, server cpu $u us/request, $x switches/request" >&2
        done
        stop_server
    done
done

# The cluster's own limit: librbd without any vhost-user hop (rbd bench, 4 KiB random), about as
# many requests as one keel-client run makes.
rbd_bench() {
    timeout 120 rbd -c "$conf" bench --io-type "$1" --io-size 4K --io-threads "$2" \
        --io-total "$3" --io-pattern rand "rbd/$image" | awk '/elapsed:/ { for (i = 1; i <= NF; i++) if ($i == "ops/sec:") print int($(i + 1)) }'
}
declare -A limit
if [ -z "${KEEL_BENCH_WORKLOADS:-}" ]; then
    limit[randread-4k-qd1]=$(rbd_bench read 1 16M)
    limit[randwrite-4k-qd1]=$(rbd_bench write 1 8M)
    limit[randread-4k-qd32]=$(rbd_bench read 32 64M)
    limit[randwrite-4k-qd32]=$(rbd_bench write 32 32M)
fi

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
printf '%-18s %10s %10s %8s %12s %12s %11s %14s %14s\n' workload keeld qsd ratio "keeld lat us" "qsd lat us" "rbd bench" "keeld cpu/sw" "qsd cpu/sw"
json="{"
for w in $workloads; do
    name=${w%%:*}
    k=$(echo "${iops[keeld,$name]}" | median)
    q=$(echo "${iops[qsd,$name]}" | median)
    kl=$(echo "${lat[keeld,$name]}" | median)
    ql=$(echo "${lat[qsd,$name]}" | median)
    r=$(python3 -c "print(f'{$k/max($q,1):.2f}')")
    b=${limit[$name]:-}
    kc=$(echo "${cpu[keeld,$name]}" | median)
    qc=$(echo "${cpu[qsd,$name]}" | median)
    ks=$(echo "${csw[keeld,$name]}" | median)
    qs=$(echo "${csw[qsd,$name]}" | median)
    printf '%-18s %10s %10s %7sx %12s %12s %11s %14s %14s\n' "$name" "$k" "$q" "$r" "$kl" "$ql" "${b:--}" "$kc/$ks" "$qc/$qs"
    json+="\"$name\": {\"keeld_iops\": $k, \"qsd_iops\": $q, \"ratio\": $r, \"keeld_lat_us\": $kl, \"qsd_lat_us\": $ql, \"rbd_bench_iops\": ${b:-null}, \"keeld_cpu_us\": $kc, \"qsd_cpu_us\": $qc, \"keeld_switches\": $ks, \"qsd_switches\": $qs}, "
done
json="${json%, }}"
echo
echo "$json"
