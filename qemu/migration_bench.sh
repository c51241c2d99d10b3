#!/usr/bin/env bash
# Live-migration downtime benchmark: a TCG guest runs fio 4k random writes with crc32c verify
# (queue depth 16, 64 MiB span, guest job fio-migrate) and is live-migrated to a second QEMU about
# 3 s into fio. Each server gets RUNS migrations (default 3), alternating:
#   keeld  one keeld disk (raw engine, O_DIRECT); both QEMUs attach to its one socket
#   handover  two keelds on one raw image (handover = true, O_DIRECT): the source on keeld A's
#          socket, the destination on keeld B's; A releases the image when the source stops the
#          guest, B takes it when the destination starts it
#   qsd    qemu-storage-daemon with two writable vhost-user-blk exports of one file node (io_uring,
#          O_DIRECT); the source attaches to the first, the destination to the second
# Per run: QMP query-migrate's total time and downtime, and the largest pause between two
# consecutive I/O completions that fio logged in the guest around the migration (guest clock, which
# stands still while QEMU has the guest stopped). Prints a table, medians and one JSON line (also in
# run/migration-bench/report.json). A run whose fio fails or whose migration does not complete is
# reported as failed.
#
#   qemu/migration_bench.sh [RUNS]
#   KEEL_MIGRATE_AFTER=3 (seconds of fio before migrating)
#   KEEL_MIGRATION_SERVERS="keeld handover qsd" (the servers to run, in this order)
#
# Run on demand, not by CI. Every QEMU and server it started is killed when it exits.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
# shellcheck source=lib/backend.sh
. "$QEMU_DIR/lib/backend.sh"

runs=${1:-3}
after=${KEEL_MIGRATE_AFTER:-3}
read -r -a servers <<<"${KEEL_MIGRATION_SERVERS:-keeld handover qsd}"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number, not '$runs'"
dir=$REPO_DIR/run/migration-bench
QMP=$QEMU_DIR/lib/qmp.py
sock=$(socket_path "$dir/disk.sock")
sock2=$(socket_path "$dir/disk2.sock")
src_qmp=$(socket_path "$dir/src.qmp")
migrate=$(socket_path "$dir/migrate.sock")
launchers=()

# Kills both QEMUs (their pid files) and their launchers, then the server. Never fails.
stop_all() {
    local p
    for p in "$dir/src.pid" "$dir/dst.pid"; do
        if [ -f "$p" ]; then kill -KILL "$(cat "$p")" 2>/dev/null || true; fi
        rm -f "$p"
    done
    for p in "${launchers[@]+"${launchers[@]}"}"; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    launchers=()
    backend_stop KILL >/dev/null 2>&1 || true
    stop_keeld_b KILL
}

# Starts keeld B (handover) on the image with socket $sock2; its pid goes to $dir/b.pid.
start_keeld_b() {
    local waited=0
    mkdir -p "$dir/b"
    printf '%s\n' '[[disk]]' 'name = "vda"' "socket = \"$sock2\"" 'engine = "raw"' \
        "path = \"$dir/disk.img\"" 'handover = true' >"$dir/b/keel.toml"
    RUST_LOG=${RUST_LOG:-info} "$KEELD_BIN" --config "$dir/b/keel.toml" >>"$dir/b/keeld.log" 2>&1 &
    echo $! >"$dir/b.pid"
    until [ -S "$sock2" ]; do
        if ! kill -0 "$(cat "$dir/b.pid")" 2>/dev/null || [ $waited -ge 300 ]; then
            die "keeld B did not start; see $dir/b/keeld.log"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Stops keeld B with SIGNAL (if it runs). Never fails.
stop_keeld_b() {
    [ -f "$dir/b.pid" ] || return 0
    kill -"$1" "$(cat "$dir/b.pid")" 2>/dev/null || true
    wait "$(cat "$dir/b.pid")" 2>/dev/null || true
    rm -f "$dir/b.pid"
}
trap 'stop_all; rm -f "$dir/disk.img"' EXIT
trap 'exit 130' INT TERM

# Waits (up to 300 s) until FILE has a line matching RE while PID runs.
wait_line() {
    local file=$1 re=$2 pid=$3 waited=0
    until tr -d '\r' 2>/dev/null <"$file" | grep -q "$re"; do
        kill -0 "$pid" 2>/dev/null && [ $waited -lt 3000 ] || return 1
        sleep 0.1
        waited=$((waited + 1))
    done
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# One migration of one guest on server KIND; appends its record to $dir/runs.txt.
one_run() {
    local kind=$1 run=$2 name="$1-$2" src dst start offset out status=completed
    local dst_socket=$sock guest=(--job fio-migrate --param size=64M --timeout 600)
    rm -f "$dir/disk.img" "$migrate"
    truncate -s 1G "$dir/disk.img"
    if [ "$kind" = qsd ]; then
        dst_socket=$sock2
        QSD_SECOND_SOCKET=$sock2 backend_start qsd "$dir" "$dir/disk.img" "$sock" 1 1G
        [ -S "$sock2" ] || die "qemu-storage-daemon did not create its second export $sock2"
    elif [ "$kind" = handover ]; then
        dst_socket=$sock2
        KEELD_DISK_EXTRA='handover = true' backend_start keeld "$dir" "$dir/disk.img" "$sock" 1 1G raw
        start_keeld_b
    else
        backend_start keeld "$dir" "$dir/disk.img" "$sock" 1 1G raw
    fi
    "$QEMU_DIR/launch.sh" --socket "$sock" "${guest[@]}" --qmp "$src_qmp" --pidfile "$dir/src.pid" \
        --log "$dir/$name-src.log" --results "$dir/$name-src" 2>"$dir/$name-src.launch" &
    src=$!
    launchers+=("$src")
    wait_line "$dir/$name-src.log" '^KEEL-MARK fio-start' "$src" || die "fio never started; see $dir/$name-src.log"
    start=$(now_ms)
    "$QEMU_DIR/launch.sh" --socket "$dst_socket" "${guest[@]}" --pidfile "$dir/dst.pid" \
        --incoming "unix:$migrate" --log "$dir/$name-dst.log" --results "$dir/$name-dst" \
        2>"$dir/$name-dst.launch" &
    dst=$!
    launchers+=("$dst")
    until [ -S "$migrate" ]; do
        kill -0 "$dst" 2>/dev/null || die "the destination QEMU did not start; see $dir/$name-dst.launch"
        sleep 0.1
    done
    while [ $(($(now_ms) - start)) -lt $((after * 1000)) ]; do sleep 0.05; done
    offset=$(($(now_ms) - start))
    python3 "$QMP" "$src_qmp" run migrate '{"uri": "unix:'"$migrate"'"}' >/dev/null || die "migrate failed"
    out=$(python3 "$QMP" "$src_qmp" migration 600) || status=migration-failed
    log "$name: $out"
    if [ "$status" = completed ]; then
        python3 "$QMP" "$src_qmp" run quit >/dev/null || true
        wait "$src" || true
        wait "$dst" || case $? in
        75) status=io-stalled ;;
        *) status=fio-failed ;;
        esac
        [ "$status" = io-stalled ] && log "$name: the guest's I/O stalled: $(cat "$dir/$name-dst/stall")"
    else
        stop_all
    fi
    launchers=()
    backend_stop TERM || log "$kind did not exit 0 on SIGTERM"
    stop_keeld_b TERM
    # kind run status fio-start-to-migrate-ms query-migrate-fields... gaps-file
    echo "$kind $run $status $offset $out gaps=$dir/$name-dst/gaps" >>"$dir/runs.txt"
}

"$QEMU_DIR/prepare.sh"
for kind in "${servers[@]}"; do
    case $kind in
    keeld | handover) backend_build_keeld ;;
    qsd) [ "$(qsd_major)" -ge 7 ] || die "qemu-storage-daemon is missing or too old" ;;
    *) die "unknown server '$kind' (keeld or qsd)" ;;
    esac
done
rm -rf "$dir"
mkdir -p "$dir"
for run in $(seq 1 "$runs"); do
    for kind in "${servers[@]}"; do
        one_run "$kind" "$run"
    done
done
rm -f "$dir/disk.img"

context=$(
    python3 -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
        accel tcg runs "$runs" migrate_after_s "$after" guest_vcpus 1 guest_mem 512M \
        host_cpus "$(nproc)" qemu "$(qemu-system-x86_64 --version | head -n 1)" \
        date "$(date -u +%Y-%m-%dT%H:%MZ)" host_loadavg_at_end "$(cut -d" " -f1-3 /proc/loadavg)"
)
report_status=0
python3 "$QEMU_DIR/lib/migration_report.py" "$dir/runs.txt" "$context" >"$dir/report.txt" || report_status=$?
cat "$dir/report.txt"
tail -n 1 "$dir/report.txt" >"$dir/report.json"
exit "$report_status"
