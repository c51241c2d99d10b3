#!/usr/bin/env bash
# Live import, measured: the time from starting keeld on a qcow2 it has never copied to the
# first guest read answered (keel-client reading 4 KiB), the live import's copy time, and the
# offline copy of the same image by `keel import` against `qemu-img convert -O raw`; then the
# same for a two-layer chain over that image, whose base the live import makes a snapshot.
# The image is SIZE_MIB of allocated qcow2 clusters (written by qemu-io); every copy reads it
# from the page cache (it was just written) and writes to the same file system.
#
#   bash tests/bench/import.sh [SIZE_MIB=2048] [WORKDIR=/var/tmp]
set -euo pipefail
cd "$(dirname "$0")/../.."
size_mib=${1:-2048}
base=${2:-/var/tmp}
cargo build --release -q -p keel-backend --bin keeld --bin keel -p keel-client --bin keel-client
bin=$PWD/target/release
work=$(mktemp -d "$base/keel-import-bench.XXXXXX")
keeld_pid=
cleanup() {
    if [ -n "$keeld_pid" ]; then kill "$keeld_pid" 2>/dev/null || true; wait "$keeld_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l; }

qemu-img create -q -f qcow2 "$work/src.qcow2" "${size_mib}M"
writes=()
for ((off = 0; off < size_mib; off += 512)); do
    n=$((size_mib - off < 512 ? size_mib - off : 512))
    writes+=(-c "write -q -P 0x5a ${off}M ${n}M")
done
qemu-io -f qcow2 "${writes[@]}" "$work/src.qcow2"
bytes=$((size_mib * 1024 * 1024))

t=$(now)
qemu-img convert -f qcow2 -O raw "$work/src.qcow2" "$work/conv.raw"
convert_s=$(since "$t")
rm -f "$work/conv.raw"

t=$(now)
"$bin/keel" import "$work/src.qcow2" "$work/offline.keel" >/dev/null
offline_s=$(since "$t")
rm -f "$work/offline.keel"

# Starts keeld with import_from = $1 on a new container $2 (in $work) and times it: sets
# first_io_s (start to the first 4 KiB read answered) and live_s (start to the stats' "done").
live_import() {
    cat >"$work/keel.toml" <<TOML
[server]
control_socket = "c.sock"
log_level = "warn"

[[disk]]
name = "d"
socket = "d.sock"
engine = "keel"
path = "$2"
import_from = "$1"
TOML
    local t
    t=$(now)
    "$bin/keeld" --config "$work/keel.toml" &
    keeld_pid=$!
    until "$bin/keel-client" bench "$work/d.sock" --rw randread --iodepth 1 --queues 1 \
        --size 4k --runtime 1ms >/dev/null 2>&1; do
        sleep 0.005
    done
    first_io_s=$(since "$t")
    until "$bin/keel" --control "$work/c.sock" stats d --json | grep -q '"state": *"done"'; do
        sleep 0.05
    done
    live_s=$(since "$t")
    kill "$keeld_pid"; wait "$keeld_pid" || true; keeld_pid=
}

live_import src.qcow2 live.keel
rm -f "$work/live.keel"

# A two-layer chain: src.qcow2 as its base, a top writing a quarter of the disk again. The live
# import stages the base as a snapshot, then the top's view, which the running disk adopts.
qemu-img create -q -f qcow2 -F qcow2 -b src.qcow2 "$work/top.qcow2"
qemu-io -f qcow2 -c "write -q -P 0x6b 0 $((size_mib / 4))M" "$work/top.qcow2"
t=$(now)
qemu-img convert -f qcow2 -O raw "$work/top.qcow2" "$work/conv.raw"
chain_convert_s=$(since "$t")
rm -f "$work/conv.raw"
flat_first_io_s=$first_io_s flat_live_s=$live_s
live_import top.qcow2 chain.keel
chain_first_io_s=$first_io_s chain_live_s=$live_s
first_io_s=$flat_first_io_s live_s=$flat_live_s
snapshots=$("$bin/keel" snapshot list "$work/chain.keel" | grep -c base || true)

rate() { echo "$bytes / $1 / 1048576" | bc -l; }
printf '%-34s %10s %12s %8s\n' "what" "seconds" "MiB/s" "vs qemu"
printf '%-34s %10.3f %12.1f %8s\n' "qemu-img convert -O raw" "$convert_s" "$(rate "$convert_s")" "1.00x"
printf '%-34s %10.3f %12.1f %7.2fx\n' "keel import (offline)" "$offline_s" "$(rate "$offline_s")" "$(echo "$convert_s / $offline_s" | bc -l)"
printf '%-34s %10.3f %12.1f %7.2fx\n' "live import, start to done" "$live_s" "$(rate "$live_s")" "$(echo "$convert_s / $live_s" | bc -l)"
printf '%-34s %10.3f\n' "live import, start to first read" "$first_io_s"
printf '%-34s %10.3f %12.1f %8s\n' "chain: qemu-img convert -O raw" "$chain_convert_s" "$(rate "$chain_convert_s")" "1.00x"
printf '%-34s %10.3f %12.1f %7.2fx\n' "chain: live import, start to done" "$chain_live_s" "$(rate "$chain_live_s")" "$(echo "$chain_convert_s / $chain_live_s" | bc -l)"
printf '%-34s %10.3f\n' "chain: start to first read" "$chain_first_io_s"
printf '%-34s %10s\n' "chain: base became a snapshot" "$([ "$snapshots" -ge 1 ] && echo yes || echo no)"
printf '{"size_bytes": %d, "qemu_img_convert_s": %.3f, "keel_import_s": %.3f, "live_import_s": %.3f, "first_io_s": %.3f, "chain_convert_s": %.3f, "chain_live_import_s": %.3f, "chain_first_io_s": %.3f}\n' \
    "$bytes" "$convert_s" "$offline_s" "$live_s" "$first_io_s" "$chain_convert_s" "$chain_live_s" "$chain_first_io_s"
