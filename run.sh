#!/usr/bin/env bash
# The main job: prepares the guest (packages, kernel, initramfs; skipped when done), builds keeld,
# serves one sparse 1 GiB raw disk from run/, boots a Linux guest on it over vhost-user-blk, runs a
# short fio job with crc32c verification inside, prints fio's summary and stops everything.
#
#   KEEL_BACKEND=keeld|qsd   the server to boot on (default keeld; qsd is qemu-storage-daemon)
#   KEEL_KVM=1               use KVM instead of TCG
set -euo pipefail
cd "$(dirname "$0")"
# shellcheck source=qemu/lib/common.sh
. qemu/lib/common.sh
# shellcheck source=qemu/lib/backend.sh
. qemu/lib/backend.sh

backend=${KEEL_BACKEND:-$DEFAULT_BACKEND}
dir=$REPO_DIR/run
image=$dir/disk.img
socket=$(socket_path "$dir/vda.sock")
kvm=()
[ "${KEEL_KVM:-0}" = 1 ] && kvm=(--kvm)

trap 'backend_stop KILL >/dev/null 2>&1 || true' EXIT

mkdir -p "$dir"
# The release build and the guest preparation (downloads, initramfs) overlap.
build=''
if [ "$backend" = keeld ]; then
    backend_build_keeld >"$dir/build.log" 2>&1 &
    build=$!
fi
qemu/prepare.sh
if [ -n "$build" ] && ! wait "$build"; then
    cat "$dir/build.log" >&2
    die "building keeld failed"
fi
backend_start "$backend" "$dir" "$image" "$socket" 1 1G

status=0
qemu/launch.sh --socket "$socket" --job fio-verify --param size=16M --queues 1 \
    --log "$dir/guest.log" --results "$dir/results" --timeout 300 "${kvm[@]+"${kvm[@]}"}" || status=$?

backend_stop TERM || { log "$backend did not exit cleanly"; status=1; }
trap - EXIT

if [ -f "$dir/results/fio" ]; then
    echo
    echo "fio in the guest ($backend, raw 1 GiB disk, console log: run/guest.log, JSON: run/results/fio):"
    python3 qemu/lib/fio_summary.py --check "$dir/results/fio" || status=1
else
    log "no fio results in the console log"
    status=1
fi
if [ "$status" = 0 ]; then
    echo "OK: guest fio with crc32c verification passed on $backend"
else
    echo "FAILED (status $status)"
fi
exit "$status"
