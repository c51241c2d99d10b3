#!/usr/bin/env bash
# Benchmarks keeld (raw engine, O_DIRECT) against qemu-storage-daemon (file driver, io_uring,
# O_DIRECT) from inside the same Linux guest: 4k random read/write at QD1 and QD32, 1M sequential
# write at QD8 (fio, libaio, direct). Boots alternate between the two servers; each server gets
# KEEL_BENCH_RUNS boots (default 3) and the report gives medians, a markdown table and JSON with
# keeld/QSD ratios (also in run/bench/report.json).
#
#   KEEL_BENCH_RUNS=3  KEEL_BENCH_RUNTIME=5 (seconds per workload)  KEEL_KVM=1 (default: TCG)
#
# Under TCG the guest's emulated CPU is the bottleneck, so the ratios mostly show that; with KVM
# they show the servers.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
# shellcheck source=lib/backend.sh
. "$QEMU_DIR/lib/backend.sh"

runs=${KEEL_BENCH_RUNS:-3}
runtime=${KEEL_BENCH_RUNTIME:-5}
dir=$REPO_DIR/run/bench
sock=$(socket_path "$dir/sock")
kvm=()
accel=tcg
if [ "${KEEL_KVM:-0}" = 1 ]; then
    kvm=(--kvm)
    accel=kvm
fi

trap 'backend_stop KILL >/dev/null 2>&1 || true' EXIT

"$QEMU_DIR/prepare.sh"
backend_build_keeld
rm -rf "$dir"
mkdir -p "$dir"

# The same written (not sparse) 256 MiB at the start of a 1 GiB image for every boot, so reads hit
# real data and neither server reads holes.
head -c 256M /dev/urandom >"$dir/template.img"
truncate -s 1G "$dir/template.img"

for run in $(seq 1 "$runs"); do
    for kind in keeld qsd; do
        cp --sparse=always "$dir/template.img" "$dir/disk.img"
        backend_start "$kind" "$dir" "$dir/disk.img" "$sock" 1 1G
        "$QEMU_DIR/launch.sh" --socket "$sock" --job bench --param "runtime=$runtime" \
            --log "$dir/$kind-$run.log" --results "$dir/$kind-$run" --timeout 600 "${kvm[@]+"${kvm[@]}"}"
        backend_stop TERM
        cp "$dir/$kind-$run/fio" "$dir/$kind-$run.json"
        log "$kind run $run: $(python3 "$QEMU_DIR/lib/fio_summary.py" --metric "$dir/$kind-$run.json")"
    done
done
trap - EXIT
rm -f "$dir/template.img" "$dir/disk.img"

context=$(
    python3 -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
        accel "$accel" runs "$runs" runtime_s "$runtime" guest_vcpus 1 queues 1 \
        host_cpus "$(nproc)" kernel "$(cat "$CACHE_DIR/kernel/RELEASE")" \
        qemu "$(qemu-system-x86_64 --version | head -n 1)" fio "$(fio --version)" \
        date "$(date -u +%Y-%m-%dT%H:%MZ)" host_loadavg_at_end "$(cut -d" " -f1-3 /proc/loadavg)"
)
python3 "$QEMU_DIR/lib/bench_report.py" "$dir" "$context"
