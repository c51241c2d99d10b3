#!/usr/bin/env bash
# Whole-system tests in a real Linux guest: each boots QEMU (TCG unless KEEL_KVM=1) on a
# vhost-user-blk server and checks what the guest saw. The server is KEEL_BACKEND (keeld, or qsd
# for qemu-storage-daemon); one test always runs on qemu-storage-daemon as the reference.
#
#   qemu/test.sh [NAME...]     run every test, or only the named ones
#
# Prints "N passed, N failed" last and exits non-zero when any test failed. A missing tool is a
# failure (prepare.sh installs what is missing), never a skip.
set -uo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"
# shellcheck source=lib/backend.sh
. "$QEMU_DIR/lib/backend.sh"
# shellcheck source=lib/libvirt.sh
. "$QEMU_DIR/lib/libvirt.sh"

BACKEND=${KEEL_BACKEND:-$DEFAULT_BACKEND}
WORK=$REPO_DIR/run/qemu-test
GUEST_TIMEOUT=${KEEL_GUEST_TIMEOUT:-300}
KVM_ARGS=()
[ "${KEEL_KVM:-0}" = 1 ] && KVM_ARGS=(--kvm)
ALL_TESTS=(fio_verify ext4_across_sigterm_restart ext4_across_sigkill multiqueue_two_queues
    fio_data_survives_restart_and_corruption_is_caught fio_verify_on_qsd
    fio_verify_keel_engine ext4_keel_engine_across_sigkill fio_verify_on_mirror
    fio_verify_across_keeld_kill fio_verify_keel_engine_across_keeld_kill online_grow_seen_by_the_guest
    fio_mirror_outage_default_config fio_verify_snapshot_space_grows libvirt_domain_hotplug
    fio_verify_migrates_to_a_second_qemu fio_verify_survives_a_cancelled_migration
    fio_verify_migrates_between_two_keelds fio_verify_survives_source_keeld_kill9
    fio_verify_during_live_import fio_verify_on_rbd fio_verify_compressed_encrypted_across_keeld_kill)
# The disk the ext4 tests use: a raw image by default; the keel-engine tests switch both.
ENGINE=raw
IMAGE=disk.img

fail() {
    log "FAIL: $*"
    return 1
}

# Boots one guest job; the remaining arguments go to launch.sh.
boot() {
    local name=$1 job=$2
    shift 2
    "$QEMU_DIR/launch.sh" --socket "$S" --job "$job" --log "$T/$name.log" \
        --results "$T/$name" --timeout "$GUEST_TIMEOUT" "${KVM_ARGS[@]+"${KVM_ARGS[@]}"}" "$@"
}

# Waits until the guest console LOG has a line matching RE while the launcher PID runs (or the
# guest timeout passes); otherwise reaps the launcher and fails with MESSAGE.
wait_console() {
    local log=$1 re=$2 pid=$3 message=$4 waited=0
    until tr -d '\r' 2>/dev/null <"$log" | grep -q "$re"; do
        if ! kill -0 "$pid" 2>/dev/null || [ $waited -ge $((GUEST_TIMEOUT * 10)) ]; then
            wait "$pid"
            fail "$message"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

fio_clean() {
    python3 "$QEMU_DIR/lib/fio_summary.py" --check "$1" >&2 || fail "fio reported errors in $1"
}

# The fio write+verify job on one raw disk of the given backend: no verify error, clean stop.
verify_on() {
    local kind=$1
    backend_start "$kind" "$T" "$T/disk.img" "$S" 1 1G || return 1
    boot verify fio-verify --param size=32M || fail "fio-verify on $kind failed" || return 1
    fio_clean "$T/verify/fio" || return 1
    backend_stop TERM || fail "$kind did not exit 0 on SIGTERM"
}

test_fio_verify() {
    verify_on "$BACKEND"
}

test_fio_verify_on_qsd() {
    verify_on qsd
}

# Boot 2 of the ext4 tests: fsck clean and every file as boot 1 recorded it.
ext4_check_boot() {
    backend_start "$BACKEND" "$T" "$T/$IMAGE" "$S" 1 1G "$ENGINE" || return 1
    boot check ext4-check || fail "ext4-check failed (fsck or checksums); see $T/check.log" || return 1
    grep -q '^fsck-status 0$' "$T/check/fsck" || fail "fsck.ext4 -n found problems" || return 1
    [ -s "$T/write/sums" ] || fail "boot 1 recorded no checksums" || return 1
    cmp -s "$T/write/sums" "$T/check/sums" || fail "checksums differ between boots" || return 1
    log "fsck clean, $(wc -l <"$T/check/sums") files match their checksums"
    backend_stop TERM || fail "$BACKEND did not exit 0 on SIGTERM"
}

test_ext4_across_sigterm_restart() {
    backend_start "$BACKEND" "$T" "$T/disk.img" "$S" 1 1G || return 1
    boot write ext4-write || fail "ext4-write failed" || return 1
    backend_stop TERM || fail "$BACKEND did not exit 0 on SIGTERM" || return 1
    ext4_check_boot
}

# The server is killed (SIGKILL) while the guest, its sync done, keeps writing; then the guest is
# killed too, as a host crash would. The restarted server must give back a file system whose
# journal replays to a clean state with every synced file intact.
test_ext4_across_sigkill() {
    local launcher
    backend_start "$BACKEND" "$T" "$T/$IMAGE" "$S" 1 1G "$ENGINE" || return 1
    boot write ext4-write --param hold=busy --pidfile "$T/qemu.pid" &
    launcher=$!
    wait_console "$T/write.log" '^KEEL-MARK synced' "$launcher" "the guest never reported its sync; see $T/write.log" || return 1
    sleep 2
    backend_stop KILL || true
    [ -f "$T/qemu.pid" ] && kill -KILL "$(cat "$T/qemu.pid")" 2>/dev/null
    if wait "$launcher"; then
        fail "the guest finished although it was killed"
        return 1
    fi
    log "server and guest killed after the guest's sync"
    ext4_check_boot
}

# The same fio write+verify job on a disk served by the storage core (engine "keel").
test_fio_verify_keel_engine() {
    backend_start keeld "$T" "$T/disk.keel" "$S" 1 1G keel || return 1
    boot verify fio-verify --param size=32M || fail "fio-verify on the keel engine failed" || return 1
    fio_clean "$T/verify/fio" || return 1
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM"
}

# A guest boots on a keel disk imported live from a qcow2 chain (base <- top, patterns written
# by qemu-io) and runs fio write+verify while the import's copy still runs (held to 4 MiB/s);
# then the blocks fio did not touch read as the chain shows them, through keeld's NBD export.
# A disk on Ceph RBD (engine "rbd", every other key at its default) under a guest's verified
# fio, on the single-node cluster of tests/ceph/start.sh, which the test starts and stops.
test_fio_verify_on_rbd() {
    local conf
    conf=$(bash "$REPO_DIR/tests/ceph/start.sh" "$T/ceph" "$$" 2>"$T/ceph-start.log") ||
        fail "the test cluster did not start; see $T/ceph-start.log" || return 1
    CEPH_CONF=$conf backend_start keeld "$T" "rbd/vda$$" "$S" 1 256M rbd || {
        bash "$REPO_DIR/tests/ceph/stop.sh" "$T/ceph"
        return 1
    }
    boot verify fio-verify --param size=32M || fail "fio-verify on an rbd disk failed"
    local ok=$?
    [ $ok -eq 0 ] && { fio_clean "$T/verify/fio"; ok=$?; }
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM" || ok=1
    bash "$REPO_DIR/tests/ceph/stop.sh" "$T/ceph" || fail "the test cluster did not stop" || ok=1
    [ $ok -eq 0 ] && log "fio verified every block on the rbd image"
    return $ok
}

test_fio_verify_during_live_import() {
    local c=$T/keel.sock state
    keel_cli || return 1
    qemu-img create -q -f qcow2 "$T/base.qcow2" 256M || fail "qemu-img create failed" || return 1
    qemu-io -f qcow2 -c "write -P 0x11 0 256M" "$T/base.qcow2" >/dev/null || return 1
    qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$T/top.qcow2" || return 1
    qemu-io -f qcow2 -c "write -P 0x22 192M 32M" "$T/top.qcow2" >/dev/null || return 1
    KEELD_DISK_EXTRA="import_from = \"$T/top.qcow2\"
import_rate = \"4M\"

[server]
control_socket = \"$c\"
nbd_socket = \"$T/nbd.sock\"" backend_start keeld "$T" "$T/disk.keel" "$S" 1 256M keel || return 1
    boot verify fio-verify --param size=32M || fail "fio-verify during the import failed" || return 1
    fio_clean "$T/verify/fio" || return 1
    state=$("$KEEL_BIN" --control "$c" stats vda --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["import"]["state"])')
    [ "$state" = copying ] || fail "the import was not running under the guest (state $state)" || return 1
    # fio wrote the first 64 MiB; the rest is the chain's, moved or still read from it.
    local check out off pattern
    for check in 64M:0x11 128M:0x11 192M:0x22 224M:0x11; do
        off=${check%%:*} pattern=${check#*:}
        out=$(qemu-io -f raw -r -c "read -P $pattern $off 32M" "nbd+unix:///vda?socket=$T/nbd.sock" 2>&1)
        case $out in
        *"verification failed"* | *rror*) fail "the 32 MiB at $off do not read as the chain's: $out" || return 1 ;;
        *"read 33554432/33554432"*) ;;
        *) fail "reading the 32 MiB at $off: $out" || return 1 ;;
        esac
    done
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM"
}

# ext4 on the keel engine, keeld and the guest killed after the guest's sync: recovery replays
# the journal and the file system checks clean with every synced file intact.
test_ext4_keel_engine_across_sigkill() {
    BACKEND=keeld ENGINE=keel IMAGE=disk.keel
    test_ext4_across_sigkill
}

test_multiqueue_two_queues() {
    backend_start "$BACKEND" "$T" "$T/disk.img" "$S" 2 1G || return 1
    boot mq fio-multiqueue --queues 2 --cpus 2 || fail "fio-multiqueue failed; see $T/mq.log" || return 1
    fio_clean "$T/mq/fio" || return 1
    grep -q '^hw_queues 2$' "$T/mq/queues" || fail "the guest disk does not have 2 queues" || return 1
    [ "$(awk '$1 == "irqs" && $3 > 0' "$T/mq/queues" | wc -l)" = 2 ] ||
        fail "not every queue completed I/O: $(cat "$T/mq/queues")" || return 1
    log "$(tr '\n' ' ' <"$T/mq/queues")"
    backend_stop TERM || fail "$BACKEND did not exit 0 on SIGTERM"
}

# Data written before a clean restart verifies after it; one corrupted block in the image is then
# reported by the guest's fio (proof that a verify failure does fail the job).
test_fio_data_survives_restart_and_corruption_is_caught() {
    backend_start "$BACKEND" "$T" "$T/disk.img" "$S" 1 1G || return 1
    boot write fio-verify --param size=16M --param phase=write || fail "fio write phase failed" || return 1
    fio_clean "$T/write/fio" || return 1
    backend_stop TERM || fail "$BACKEND did not exit 0 on SIGTERM" || return 1
    backend_start "$BACKEND" "$T" "$T/disk.img" "$S" 1 1G || return 1
    boot verify fio-verify --param size=16M --param phase=verify ||
        fail "data written before the restart did not verify" || return 1
    fio_clean "$T/verify/fio" || return 1
    backend_stop TERM || fail "$BACKEND did not exit 0 on SIGTERM" || return 1
    # 512 bytes of zeroes in the middle of the sequentially written first 16 MiB.
    dd if=/dev/zero of="$T/disk.img" bs=512 count=1 seek=$((5 * 2048 + 7)) conv=notrunc status=none
    backend_start "$BACKEND" "$T" "$T/disk.img" "$S" 1 1G || return 1
    if boot corrupt fio-verify --param size=16M --param phase=verify; then
        fail "fio did not detect the corrupted block"
        return 1
    fi
    grep -q -i 'verify' "$T/corrupt.log" || fail "the failure was not a verify failure; see $T/corrupt.log" || return 1
    log "the corrupted block was reported"
    backend_stop TERM || fail "$BACKEND did not exit 0 on SIGTERM"
}

# keeld serving a raw disk mirrored on $T/a.img and $T/b.img, with a control socket at $C, as
# a user writes it: `direct` (O_DIRECT), the chunk size and the rest left at their defaults.
mirror_start() {
    keeld_start_with_control 'engine = "raw"
mirror = ["'"$T"'/a.img", "'"$T"'/b.img"]
size = "1G"'
}

# Starts keeld with the control socket $C and one disk "vda" on $S whose other keys are $1, and
# waits for both sockets.
keeld_start_with_control() {
    local waited=0
    [ -x "$KEELD_BIN" ] || backend_build_keeld
    C=$(socket_path "$T/ctl")
    rm -f "$S" "$C"
    cat >"$T/keel.toml" <<END
[server]
control_socket = "$C"

[[disk]]
name = "vda"
socket = "$S"
$1
END
    RUST_LOG=${RUST_LOG:-info} "$KEELD_BIN" --config "$T/keel.toml" >>"$T/keeld.log" 2>&1 &
    BACKEND_PID=$!
    BACKEND_KIND=keeld
    until [ -S "$S" ] && [ -S "$C" ]; do
        if ! kill -0 "$BACKEND_PID" 2>/dev/null || [ $waited -ge 300 ]; then
            fail "keeld did not start; see $T/keeld.log"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Builds the keel CLI (release; cargo makes it a no-op when it is current, KEEL_SKIP_BUILD
# skips it when a binary is there) and sets KEEL_BIN.
keel_cli() {
    KEEL_BIN=$REPO_DIR/target/release/keel
    [ -n "${KEEL_SKIP_BUILD:-}" ] && [ -x "$KEEL_BIN" ] && return 0
    (cd "$REPO_DIR" && cargo build --release -q -p keel-backend --bin keel) || fail "cannot build keel"
}

# One field of the mirror's status: "lsn", or "state" / "resync_bytes_copied" of component $2
# (default 1).
mirror_field() {
    "$KEEL_BIN" --control "$C" mirror status vda --json |
        python3 -c "import json,sys; s=json.load(sys.stdin); print(s['$1'] if '$1' == 'lsn' else s['components'][${2:-1}]['$1'])"
}

# Waits (up to 60 s) until component $1 is in sync.
mirror_wait_in_sync() {
    local waited=0
    until [ "$(mirror_field state "$1")" = in_sync ]; do
        if [ $waited -ge 600 ]; then
            fail "component $1 never came back in sync: $(mirror_field state "$1")"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Fails if any component is failed, or any event tells of a failure or a stopped resync: the
# tests inject no fault, so either would be Keel's own error.
mirror_no_failure() {
    local why
    why=$("$KEEL_BIN" --control "$C" mirror status vda --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
bad = ["component %d is failed" % c["index"] for c in s["components"] if c["state"] == "failed"]
bad += [e for e in s["events"] if "failed" in e or "stopped" in e]
print("; ".join(bad))') || fail "cannot read the mirror status" || return 1
    [ -z "$why" ] || fail "$why"
}

# Waits (up to 120 s) until the mirror's LSN passes $1.
mirror_wait_lsn() {
    local waited=0
    until [ "$(mirror_field lsn)" -gt "$1" ]; do
        if [ $waited -ge 1200 ]; then
            fail "the guest made no writes"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# A mirrored disk: component 1 goes offline while the guest's fio writes, and comes back while
# it goes on. fio sees no error, the resync copies only part of the disk, and the components
# end identical.
test_fio_verify_on_mirror() {
    local launcher lsn copied
    keel_cli || return 1
    mirror_start || return 1
    boot verify fio-verify --param size=32M &
    launcher=$!
    mirror_wait_lsn 200 || return 1
    "$KEEL_BIN" --control "$C" mirror offline vda 1 || fail "offline failed" || return 1
    lsn=$(mirror_field lsn)
    mirror_wait_lsn $((lsn + 200)) || return 1
    kill -0 "$launcher" 2>/dev/null || fail "the guest finished before component 1 came back" || return 1
    "$KEEL_BIN" --control "$C" mirror online vda 1 || fail "online failed" || return 1
    wait "$launcher" || fail "fio-verify on a mirror failed; see $T/verify.log" || return 1
    fio_clean "$T/verify/fio" || return 1
    mirror_wait_in_sync 1 || return 1
    mirror_no_failure || return 1
    copied=$(mirror_field resync_bytes_copied)
    if [ "$copied" -le 0 ] || [ "$copied" -ge $((1 << 30)) ]; then
        fail "resync copied $copied bytes (want more than 0, less than the disk)"
        return 1
    fi
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM" || return 1
    cmp -s "$T/a.img" "$T/b.img" || fail "the components differ" || return 1
    log "resync copied $copied bytes; components identical"
}

# A whole outage in the configuration users get (O_DIRECT), the guest's fio checking every block
# (crc32c): the guest fills [0, 64M); component 1 goes offline; the guest writes [64M, 72M)
# around it; `keel mirror online` brings it back (and must say the resync started); the guest
# verifies every region while the resync runs. Then component 0 goes offline and the guest
# verifies again, reading component 1 alone. The resync copies the 8 MiB dirtied (within 1.1x),
# no component ever fails, and the component files end identical.
test_fio_mirror_outage_default_config() {
    local out copied dirtied=$((8 << 20))
    keel_cli || return 1
    mirror_start || return 1
    boot fill fio-mirror --param phase=fill || fail "fio fill failed; see $T/fill.log" || return 1
    fio_clean "$T/fill/fio" || return 1
    "$KEEL_BIN" --control "$C" mirror offline vda 1 || fail "offline failed" || return 1
    boot around fio-mirror --param phase=around || fail "fio around failed; see $T/around.log" || return 1
    fio_clean "$T/around/fio" || return 1
    out=$("$KEEL_BIN" --control "$C" mirror online vda 1) || fail "online failed: $out" || return 1
    log "$out"
    case $out in
    *"in the background"* | *"is in sync"*) ;;
    *) fail "online did not say the resync started" || return 1 ;;
    esac
    boot verify fio-mirror --param phase=verify || fail "fio verify failed; see $T/verify.log" || return 1
    fio_clean "$T/verify/fio" || return 1
    mirror_wait_in_sync 1 || return 1
    copied=$(mirror_field resync_bytes_copied 1)
    if [ "$copied" -lt "$dirtied" ] || [ "$copied" -gt $((dirtied * 11 / 10)) ]; then
        fail "resync copied $copied bytes for $dirtied dirtied (want 1.0x to 1.1x)"
        return 1
    fi
    "$KEEL_BIN" --control "$C" mirror offline vda 0 || fail "offline of component 0 failed" || return 1
    boot alone fio-mirror --param phase=verify ||
        fail "component 1 alone does not verify; see $T/alone.log" || return 1
    fio_clean "$T/alone/fio" || return 1
    "$KEEL_BIN" --control "$C" mirror online vda 0 || fail "online of component 0 failed" || return 1
    mirror_wait_in_sync 0 || return 1
    mirror_no_failure || return 1
    "$KEEL_BIN" --control "$C" mirror status vda >&2 || fail "mirror status failed" || return 1
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM" || return 1
    cmp -s "$T/a.img" "$T/b.img" || fail "the components differ" || return 1
    log "resync copied $copied bytes for $dirtied dirtied ($(python3 -c "print(f'{$copied / $dirtied:.3f}')")x); components identical"
}

# keeld is killed (SIGKILL) while the guest's fio write+verify has requests in flight, and
# started again on the same disk each time, until KEEL_KILLS (default 3) restarts ran requests
# again. Every request takes 10 to 30 ms (delay_us), so once fio runs keeld holds the guest's
# whole queue depth at any instant, and completions come back out of order. QEMU
# (reconnect-ms on its chardev) reconnects and hands back the inflight area; keeld runs the
# requests that were in flight when it died, and fio finishes with every block verifying: the
# guest sees nothing but pauses. $3, if given, is added to keeld's disk table.
verify_across_kill() {
    local engine=$1 image=$2 launcher mark kill again total=0 restarts=0
    local KEELD_DISK_EXTRA="delay_us = 20000${3:+
$3}"
    backend_start keeld "$T" "$T/$image" "$S" 1 1G "$engine" || return 1
    boot verify fio-verify --param size=32M --reconnect-ms 200 \
        --pidfile "$T/qemu.pid" &
    launcher=$!
    wait_console "$T/verify.log" '^KEEL-JOB-BEGIN fio-verify' "$launcher" "the guest never started fio; see $T/verify.log" || return 1
    # Until KEEL_KILLS restarts found requests in flight: a kill before fio's first write (the
    # guest is slow to start it under TCG) finds none and does not count.
    kill=0
    while [ "$restarts" -lt "${KEEL_KILLS:-3}" ]; do
        kill=$((kill + 1))
        [ "$kill" -le $((2 * ${KEEL_KILLS:-3} + 2)) ] || fail "too many kills found nothing in flight" || return 1
        sleep 2.5
        kill -0 "$launcher" 2>/dev/null || fail "the guest finished before kill $kill" || return 1
        backend_stop KILL || true
        mark=$(wc -l <"$T/keeld.log")
        sleep 0.5
        backend_start keeld "$T" "$T/$image" "$S" 1 1G "$engine" || return 1
        # The frontend reconnects within reconnect-ms; the count is logged when the ring restarts.
        sleep 1
        again=$(tail -n +"$((mark + 1))" "$T/keeld.log" |
            sed -n 's/.*running \([0-9]*\) requests again.*/\1/p' | head -n 1)
        log "kill $kill: the restarted keeld ran ${again:-0} requests again"
        if [ -n "$again" ]; then
            total=$((total + again))
            restarts=$((restarts + 1))
        fi
    done
    wait "$launcher" || fail "fio-verify across the kills failed; see $T/verify.log" || return 1
    fio_clean "$T/verify/fio" || return 1
    log "$restarts of $kill restarts ran $total requests again; every block verified"
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM"
}

test_fio_verify_across_keeld_kill() {
    verify_across_kill raw disk.img
}

test_fio_verify_keel_engine_across_keeld_kill() {
    verify_across_kill keel disk.keel
}

# The same on a compressed (zstd), encrypted (aes-xts-256, a 64-byte key file) keel disk: after
# the kills and fio's verify, `keel info` names the codec, and `keel fsck` refuses the container
# without the key and finds it clean with it.
test_fio_verify_compressed_encrypted_across_keeld_kill() {
    local out
    keel_cli || return 1
    head -c 64 /dev/urandom >"$T/disk.key" || fail "cannot make the key file" || return 1
    verify_across_kill keel disk.keel 'compression = "zstd"
encryption = "aes-xts-256"
key_file = "'"$T"'/disk.key"' || return 1
    out=$("$KEEL_BIN" info --json --key-file "$T/disk.key" "$T/disk.keel" 2>&1) ||
        fail "keel info: $out" || return 1
    case $out in
    *'"compression": "zstd"'* | *'"compression":"zstd"'*) ;;
    *) fail "keel info does not name zstd: $out" || return 1 ;;
    esac
    if out=$("$KEEL_BIN" fsck "$T/disk.keel" 2>&1); then
        fail "keel fsck opened the encrypted container without its key: $out"
        return 1
    fi
    case $out in
    *key*) log "without the key: $out" ;;
    *) fail "keel fsck without the key failed for another reason: $out" || return 1 ;;
    esac
    out=$("$KEEL_BIN" fsck --key-file "$T/disk.key" "$T/disk.keel" 2>&1) ||
        fail "keel fsck with the key: $out" || return 1
    log "keel fsck with the key: clean"
}

# A keel disk grows while the guest runs (`keel resize`): keeld sends the config-change message,
# QEMU rereads the config space and tells the guest, whose disk grows; a block written at the new
# end reads back.
test_online_grow_seen_by_the_guest() {
    local launcher out
    keel_cli || return 1
    keeld_start_with_control 'engine = "keel"
path = "'"$T"'/disk.keel"
size = "1G"' || return 1
    boot grow grow-watch &
    launcher=$!
    wait_console "$T/grow.log" '^KEEL-MARK sized' "$launcher" "the guest never reported its size; see $T/grow.log" || return 1
    out=$("$KEEL_BIN" --control "$C" resize vda 1056M) || fail "keel resize failed: $out" || return 1
    log "$out"
    case $out in
    *"the attached frontend was told"*) ;;
    *) fail "keeld did not tell the frontend" || return 1 ;;
    esac
    wait "$launcher" || fail "grow-watch failed; see $T/grow.log" || return 1
    [ "$(cat "$T/grow/size-before")" = $((1 << 21)) ] || fail "size before: $(cat "$T/grow/size-before")" || return 1
    [ "$(cat "$T/grow/size-after")" = $((1056 << 11)) ] || fail "size after: $(cat "$T/grow/size-after")" || return 1
    log "the guest's disk grew from $(cat "$T/grow/size-before") to $(cat "$T/grow/size-after") sectors"
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM"
}

# The snapshot-space probe in a real guest: a 1 GiB keel disk (default spare) written in full and
# snapshotted, served with max_size; fio in the guest writes 640 MiB over the snapshotted data
# (two and a half times what the container had free) and verifies it: no write fails, the container file
# grows, and `keel stats` shows the blocks the snapshot pins.
test_fio_verify_snapshot_space_grows() {
    local before after stats
    keel_cli || return 1
    head -c 1G /dev/urandom >"$T/full.raw" || fail "cannot make the raw image" || return 1
    "$KEEL_BIN" import "$T/full.raw" "$T/disk.keel" >/dev/null || fail "keel import failed" || return 1
    rm -f "$T/full.raw"
    "$KEEL_BIN" snapshot create "$T/disk.keel" full >/dev/null || fail "keel snapshot failed" || return 1
    before=$(stat -c %s "$T/disk.keel")
    keeld_start_with_control 'engine = "keel"
path = "'"$T"'/disk.keel"
size = "1G"
max_size = "3G"' || return 1
    boot verify fio-verify --param size=320M || fail "fio-verify over the snapshot failed; see $T/verify.log" || return 1
    fio_clean "$T/verify/fio" || return 1
    after=$(stat -c %s "$T/disk.keel")
    [ "$after" -gt "$before" ] || fail "the container did not grow ($before bytes)" || return 1
    stats=$("$KEEL_BIN" --control "$C" stats vda) || fail "keel stats failed" || return 1
    case $stats in
    *"I/O errors              0"*) ;;
    *) fail "guest writes failed: $stats" || return 1 ;;
    esac
    log "the container grew from $before to $after bytes; $(echo "$stats" | grep -E '^space|pinned')"
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM"
}

# A TCG guest booting the test kernel under libvirt, its disk a keeld keel-engine disk, with
# the domain shaped as docs/examples/keel-domain.xml (memfd shared memory, a vhostuser disk).
libvirt_domain_xml() {
    local job=$1 disk=$2 console=$3
    cat <<EOF
<domain type='qemu'>
  <name>keel-test</name>
  <memory unit='MiB'>512</memory>
  <vcpu>2</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$KERNEL_IMAGE</kernel>
    <initrd>$INITRAMFS_IMAGE</initrd>
    <cmdline>console=ttyS0 panic=-1 keel.job=$job keel.size=8M</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
$disk
    <serial type='file'>
      <source path='$console'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# A keeld disk as libvirt names it: a vhostuser disk on SOCKET as guest device DEV.
libvirt_disk_xml() {
    cat <<EOF
    <disk type='vhostuser' device='disk'>
      <driver name='qemu' type='raw' queues='1'/>
      <source type='unix' path='$1'>
        <reconnect enabled='yes' timeout='1'/>
      </source>
      <target dev='$2' bus='virtio'/>
    </disk>
EOF
}

# Waits for KEEL-MARK $2 on console $1 while the test domain runs.
libvirt_wait_mark() {
    local n=0
    until tr -d '\r' <"$1" 2>/dev/null | grep -q "^KEEL-MARK $2\$"; do
        [ "$(lvirsh domstate keel-test 2>/dev/null)" = running ] || return 1
        [ $n -lt $((GUEST_TIMEOUT * 10)) ] || return 1
        sleep 0.1
        n=$((n + 1))
    done
}

# libvirt runs a guest on a keeld disk: virsh define and start a domain whose guest runs fio
# verify on it; a second disk added to the running keeld (keel disk add) and hot-plugged with
# virsh attach-device (the guest verifies it too); virsh detach-device, keel disk remove, and
# virsh shutdown (the guest powers off on the ACPI power button). keeld, libvirtd and
# QEMU run as an unprivileged user (lib/libvirt.sh).
test_libvirt_domain_hotplug() {
    local keeld_pid='' console=$T/console.log c=$T/keel.sock state='' waited
    keel_cli || return 1
    virt-xml-validate "$REPO_DIR/docs/examples/keel-domain.xml" domain >/dev/null 2>&1 ||
        fail "docs/examples/keel-domain.xml is not a valid domain" || return 1
    # A short directory: libvirt's monitor sockets live under it.
    libvirt_start "$(mktemp -d "${TMPDIR:-/tmp}/keel-lv.XXXXXX")"
    trap 'libvirt_stop; as_root pkill -KILL -u "$LIBVIRT_USER" -x keeld' EXIT
    cat >"$T/keel.toml" <<EOF
[server]
control_socket = "$c"

[[disk]]
name = "d0"
socket = "$T/d0.sock"
engine = "keel"
path = "$T/d0.keel"
size = "256M"
EOF
    as_root chown "$LIBVIRT_USER" "$T"
    as_libvirt_user "$KEELD_BIN" --config "$T/keel.toml" >>"$T/keeld.log" 2>&1 &
    keeld_pid=$!
    for waited in $(seq 100); do [ -S "$T/d0.sock" ] && break; sleep 0.1; done
    [ -S "$T/d0.sock" ] || fail "keeld did not start: $(tail -n 5 "$T/keeld.log")" || return 1
    libvirt_domain_xml hotplug-verify "$(libvirt_disk_xml "$T/d0.sock" vda)" "$console" >"$T/domain.xml"
    libvirt_disk_xml "$T/d1.sock" vdb >"$T/d1.xml"
    virt-xml-validate "$T/domain.xml" domain >/dev/null 2>&1 || fail "the test domain is not valid" || return 1
    lvirsh define "$T/domain.xml" >/dev/null || fail "virsh define failed" || return 1
    lvirsh start keel-test >/dev/null || fail "virsh start failed" || return 1
    libvirt_wait_mark "$console" hotplug-ready || fail "the guest did not verify vda; console: $console" || return 1
    # The second disk is added to the running keeld, then plugged into the running guest.
    "$KEEL_BIN" --control "$c" disk add --name d1 --socket "$T/d1.sock" --engine raw \
        --path "$T/d1.img" --size 64M >/dev/null || fail "keel disk add failed" || return 1
    lvirsh attach-device keel-test "$T/d1.xml" --live >/dev/null || fail "virsh attach-device failed" || return 1
    libvirt_wait_mark "$console" hotplug-verified || fail "the guest did not verify the hot-plugged vdb" || return 1
    "$KEEL_BIN" --control "$c" disks | grep -Eq '^d1 .* yes ' ||
        fail "keel disks does not show d1 attached: $("$KEEL_BIN" --control "$c" disks)" || return 1
    lvirsh detach-device keel-test "$T/d1.xml" --live >/dev/null || fail "virsh detach-device failed" || return 1
    libvirt_wait_mark "$console" shutdown-ready || fail "the guest did not see vdb go" || return 1
    lvirsh shutdown keel-test >/dev/null || fail "virsh shutdown failed" || return 1
    for waited in $(seq $((GUEST_TIMEOUT * 10))); do
        state=$(lvirsh domstate keel-test 2>/dev/null)
        [ "$state" = "shut off" ] && break
        sleep 0.1
    done
    [ "$state" = "shut off" ] || fail "the guest did not power off ($state)" || return 1
    tr -d '\r' <"$console" | grep -q '^KEEL-MARK power-button$' ||
        fail "the guest powered off without the power button" || return 1
    [ "$(guest_status "$console")" = 0 ] || fail "the guest job failed; console: $console" || return 1
    extract_results "$console" "$T/results"
    fio_clean "$T/results/fio" || return 1
    fio_clean "$T/results/fio-hotplug" || return 1
    "$KEEL_BIN" --control "$c" disks | grep -Eq '^d1 .* no ' || fail "d1 still attached after detach" || return 1
    "$KEEL_BIN" --control "$c" disk remove d1 >/dev/null || fail "keel disk remove failed" || return 1
    [ ! -e "$T/d1.sock" ] || fail "the removed disk's socket is still there" || return 1
    # keeld itself, not runuser (which would answer a TERM with a KILL of its child).
    as_root pkill -TERM -u "$LIBVIRT_USER" -x keeld
    wait "$keeld_pid" || fail "keeld did not exit 0 on SIGTERM" || return 1
}

# Live migration on one host, as libvirt does it: the destination QEMU names the same keeld
# socket. The source guest runs fio write+verify (crc32c) on a keel-engine disk; the
# destination is started with -incoming, attaches to keeld beside the source and waits.
QMP=$QEMU_DIR/lib/qmp.py

# Starts the source guest (fio-verify with the launcher arguments MIGRATION_ARGS, QMP on $T/src.qmp)
# and waits until fio has run for $1 seconds; sets SRC_PID. The launcher's messages go to
# $T/src.launch (one of the two QEMUs always ends without the guest's status).
migration_source() {
    SRC_QMP=$(socket_path "$T/src.qmp")
    boot src fio-verify "${MIGRATION_ARGS[@]}" --qmp "$SRC_QMP" \
        --pidfile "$T/qemu.pid" 2>"$T/src.launch" &
    SRC_PID=$!
    wait_console "$T/src.log" '^KEEL-JOB-BEGIN fio-verify' "$SRC_PID" "the guest never started fio; see $T/src.log" || return 1
    sleep "$1"
}

# Starts the destination QEMU, waiting for the migration on $MIGRATE; sets DST_PID. Its disk
# socket is $DST_SOCKET (default: the source's); DST_KEELD_LOG (default $T/keeld.log) must then
# have the line DST_ATTACHED (default: the destination attached beside the source).
migration_destination() {
    local waited=0
    MIGRATE=$(socket_path "$T/migrate.sock")
    S=${DST_SOCKET:-$S} boot dst fio-verify "${MIGRATION_ARGS[@]}" --pidfile "$T/dst.pid" \
        --incoming "unix:$MIGRATE" 2>"$T/dst.launch" &
    DST_PID=$!
    # QEMU listens for the guest's state once its devices are set up (attached to keeld).
    until [ -S "$MIGRATE" ]; do
        if ! kill -0 "$DST_PID" 2>/dev/null || [ $waited -ge 300 ]; then
            fail "the destination QEMU did not start; see $T/dst.log"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    grep -q "${DST_ATTACHED:-attached beside another one}" "${DST_KEELD_LOG:-$T/keeld.log}" ||
        fail "the destination did not attach to its disk socket" || return 1
}

# Starts the migration to $MIGRATE; with `capped`, at 8 MiB/s and waits until it copies RAM
# (so that it is still copying when the caller acts).
start_migration() {
    if [ "${1:-}" = capped ]; then
        python3 "$QMP" "$SRC_QMP" run migrate-set-parameters '{"max-bandwidth": 8388608}' >/dev/null ||
            fail "cannot cap the migration bandwidth" || return 1
    fi
    python3 "$QMP" "$SRC_QMP" run migrate '{"uri": "unix:'"$MIGRATE"'"}' >/dev/null ||
        fail "migrate failed" || return 1
    if [ "${1:-}" = capped ]; then
        python3 "$QMP" "$SRC_QMP" migration-active 60 >/dev/null ||
            fail "the migration never started copying" || return 1
    fi
}

# Waits for the migration to complete, quits the source and waits for fio-verify to finish
# cleanly on the destination.
finish_migration_on_destination() {
    local out
    out=$(python3 "$QMP" "$SRC_QMP" migration 300) || fail "the migration did not complete: $out" || return 1
    log "migration: $out"
    python3 "$QMP" "$SRC_QMP" run quit >/dev/null
    wait "$SRC_PID"
    wait "$DST_PID" || fail "fio-verify did not finish on the destination; see $T/dst.log and $T/dst.launch" || return 1
    fio_clean "$T/dst/fio"
}

# A first boot writes the disk (fio-verify, phase write, 128 MiB per section); the second
# verifies it and migrates 1 s into it, while fio reads the sequential section (a few seconds
# under TCG). The verify reads go through the guest's page cache, and readahead fills pages
# ahead of fio: keeld fills them without the guest's CPU touching them (and the kernel does not
# zero pages it allocates: init_on_alloc=0), so only the dirty log tells QEMU to copy them
# again; a page keeld filled after QEMU copied it, read by fio on the destination, fails the
# verify. fio finishes on the destination with every block verified.
test_fio_verify_migrates_to_a_second_qemu() {
    local MIGRATION_ARGS=(--param size=128M --param phase=verify --param direct=0
        --append init_on_alloc=0)
    backend_start keeld "$T" "$T/disk.keel" "$S" 1 1G keel || return 1
    boot write fio-verify --param size=128M --param phase=write || fail "fio write phase failed" || return 1
    fio_clean "$T/write/fio" || return 1
    migration_source 1 || return 1
    migration_destination || return 1
    start_migration || return 1
    finish_migration_on_destination || return 1
    grep -q 'dirty-page logging on' "$T/keeld.log" || fail "keeld never logged dirty pages" || return 1
    grep -q 'takes the disk over' "$T/keeld.log" ||
        fail "the destination never took the disk over" || return 1
    log "fio finished on the destination; every block verified"
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM"
}

# A migration cancelled while it copies RAM (bandwidth capped so that it is still copying) leaves
# the guest on the source, where fio finishes with every block verified; keeld stops logging.
test_fio_verify_survives_a_cancelled_migration() {
    local out MIGRATION_ARGS=(--param size=64M --param phase=all)
    backend_start keeld "$T" "$T/disk.keel" "$S" 1 1G keel || return 1
    migration_source 3 || return 1
    migration_destination || return 1
    start_migration capped || return 1
    sleep 2
    python3 "$QMP" "$SRC_QMP" run migrate_cancel >/dev/null || fail "migrate_cancel failed" || return 1
    out=$(python3 "$QMP" "$SRC_QMP" migration 60)
    case $out in
    "status cancelled"*) log "migration: $out" ;;
    *) fail "the migration did not end cancelled: $out" || return 1 ;;
    esac
    # The destination gives up (its incoming migration failed); stop it if it lingers.
    [ -f "$T/dst.pid" ] && kill -TERM "$(cat "$T/dst.pid")" 2>/dev/null
    wait "$DST_PID"
    wait "$SRC_PID" || fail "fio-verify on the source failed after the cancel; see $T/src.log and $T/src.launch" || return 1
    fio_clean "$T/src/fio" || return 1
    grep -q 'dirty-page logging on' "$T/keeld.log" || fail "keeld never logged dirty pages" || return 1
    grep -q 'dirty-page logging off' "$T/keeld.log" || fail "keeld did not stop logging" || return 1
    if grep -q 'takes the disk over' "$T/keeld.log"; then
        fail "the disk changed hands although the migration was cancelled"
        return 1
    fi
    log "fio finished on the source after the cancel; every block verified"
    backend_stop TERM || fail "keeld did not exit 0 on SIGTERM"
}

# Live migration between two keelds sharing one keel container (two hosts on shared storage, or
# a keeld upgrade): keeld A (backend_start, handover = true) serves the source guest; keeld B
# starts on the same container with its own socket and waits in standby.

# Starts keeld B in $T/b on socket $1 with control socket $2, the same container and the
# default config (direct left as it is); sets KEELD2_PID (written to $T/keeld2.pid for the trap).
second_keeld() {
    local socket=$1 control=$2 waited=0
    mkdir -p "$T/b"
    printf '%s\n' '[server]' "control_socket = \"$control\"" '' '[[disk]]' 'name = "vda"' \
        "socket = \"$socket\"" 'engine = "keel"' "path = \"$T/disk.keel\"" 'handover = true' \
        >"$T/b/keel.toml"
    RUST_LOG=${RUST_LOG:-info} "$KEELD_BIN" --config "$T/b/keel.toml" >>"$T/b/keeld.log" 2>&1 &
    KEELD2_PID=$!
    echo "$KEELD2_PID" >"$T/keeld2.pid"
    until [ -S "$socket" ] && [ -S "$control" ]; do
        if ! kill -0 "$KEELD2_PID" 2>/dev/null || [ $waited -ge 300 ]; then
            fail "keeld B did not start: $(tail -n 5 "$T/b/keeld.log")"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# Stops keeld B with SIGTERM; fails unless it exits 0.
stop_second_keeld() {
    kill -TERM "$KEELD2_PID" 2>/dev/null
    wait "$KEELD2_PID" || fail "keeld B did not exit 0 on SIGTERM"
}

# Stops keeld B, then keeld A, each with SIGTERM, and checks the container with `keel fsck`.
stop_both_keelds_and_fsck() {
    stop_second_keeld || return 1
    backend_stop TERM || fail "keeld A did not exit 0 on SIGTERM" || return 1
    "$KEEL_BIN" fsck "$T/disk.keel" >"$T/fsck.out" 2>&1 || fail "keel fsck: $(cat "$T/fsck.out")" || return 1
    log "keel fsck clean"
}

# The state `keel disks` gives vda on control socket $1: serving, standby or released.
disk_state() {
    "$KEEL_BIN" --control "$1" disks --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["state"])'
}

# fio write+verify (crc32c, 64 MiB per section) starts on keeld A's socket; 3 s in, the guest
# migrates to a QEMU on keeld B's socket. A releases the container when the source stops its
# rings (drain, flush, checkpoint, unlock), B takes it when the destination starts them (lock,
# open, replay): fio verifies on B what the guest wrote through A. Then `keel fsck` is clean.
test_fio_verify_migrates_between_two_keelds() {
    local s2 c2 MIGRATION_ARGS=(--param size=64M --param phase=all)
    keel_cli || return 1
    KEELD_DISK_EXTRA='handover = true' backend_start keeld "$T" "$T/disk.keel" "$S" 1 1G keel || return 1
    s2=$(socket_path "$T/b.sock")
    c2=$(socket_path "$T/b-control.sock")
    second_keeld "$s2" "$c2" || return 1
    [ "$(disk_state "$c2")" = standby ] || fail "keeld B is not in standby: $(disk_state "$c2")" || return 1
    migration_source 3 || return 1
    DST_SOCKET=$s2 DST_KEELD_LOG=$T/b/keeld.log DST_ATTACHED='frontend 1 attached' \
        migration_destination || return 1
    start_migration || return 1
    finish_migration_on_destination || return 1
    grep -q 'released for another keeld' "$T/keeld.log" || fail "keeld A never released the container" || return 1
    grep -q 'taken in' "$T/b/keeld.log" || fail "keeld B never took the container" || return 1
    # The destination quit once its job ended: B let the container go as well.
    [ "$(disk_state "$c2")" = released ] || fail "keeld B is $(disk_state "$c2"), not released" || return 1
    log "fio finished on keeld B, every block verified; A $(grep -o 'released for another keeld in [^ ]*' "$T/keeld.log" | tail -n 1), B $(grep -o 'taken in [^ ]*' "$T/b/keeld.log" | tail -n 1)"
    stop_both_keelds_and_fsck
}

# As above, but keeld A is killed with SIGKILL while QEMU copies RAM (bandwidth capped so that
# it is still copying), and restarted at once as a service manager would. The source QEMU
# reconnects (reconnect-ms) and gets its requests in flight back from its inflight area. Whichever
# side carries on (the migration completes to keeld B, or fails and the guest stays on A), fio
# verifies every block there, and `keel fsck` is clean afterwards.
test_fio_verify_survives_source_keeld_kill9() {
    local out s2 c2 carried MIGRATION_ARGS=(--param size=64M --param phase=all --reconnect-ms 500)
    keel_cli || return 1
    KEELD_DISK_EXTRA='handover = true' backend_start keeld "$T" "$T/disk.keel" "$S" 1 1G keel || return 1
    s2=$(socket_path "$T/b.sock")
    c2=$(socket_path "$T/b-control.sock")
    second_keeld "$s2" "$c2" || return 1
    migration_source 3 || return 1
    DST_SOCKET=$s2 DST_KEELD_LOG=$T/b/keeld.log DST_ATTACHED='frontend 1 attached' \
        migration_destination || return 1
    start_migration capped || return 1
    sleep 1
    backend_stop KILL
    log "keeld A killed with SIGKILL mid-migration; restarting it"
    KEELD_DISK_EXTRA='handover = true' backend_start keeld "$T" "$T/disk.keel" "$S" 1 1G keel || return 1
    python3 "$QMP" "$SRC_QMP" run migrate-set-parameters '{"max-bandwidth": 1073741824}' >/dev/null
    out=$(python3 "$QMP" "$SRC_QMP" migration 300)
    log "migration: $out"
    case $out in
    "status completed"*)
        carried=dst
        python3 "$QMP" "$SRC_QMP" run quit >/dev/null
        wait "$SRC_PID"
        ;;
    *)
        carried=src
        [ -f "$T/dst.pid" ] && kill -TERM "$(cat "$T/dst.pid")" 2>/dev/null
        wait "$DST_PID"
        ;;
    esac
    if [ $carried = dst ]; then
        wait "$DST_PID" || fail "fio-verify failed on the destination; see $T/dst.log" || return 1
        grep -q 'taken in' "$T/b/keeld.log" || fail "keeld B never took the container" || return 1
    else
        wait "$SRC_PID" || fail "fio-verify failed on the source; see $T/src.log" || return 1
        [ "$(disk_state "$c2")" = standby ] || fail "keeld B left standby: $(disk_state "$c2")" || return 1
    fi
    fio_clean "$T/$carried/fio" || return 1
    log "the guest carried on at the $carried side; every block verified"
    stop_both_keelds_and_fsck
}

# Runs one test in a subshell that always stops its server and guest.
run_one() {
    local name=$1 start status
    T=$WORK/$name
    S=$(socket_path "$T/sock")
    rm -rf "$T"
    mkdir -p "$T"
    start=$(date +%s)
    log "=== $name ($BACKEND)"
    (
        trap 'backend_stop KILL >/dev/null 2>&1; for p in "$T"/qemu.pid "$T"/dst.pid "$T"/keeld2.pid; do [ -f "$p" ] && kill -KILL "$(cat "$p")" 2>/dev/null; done; true' EXIT
        "test_$name"
    )
    status=$?
    if [ $status = 0 ]; then
        log "PASS: $name ($(($(date +%s) - start)) s)"
        passed=$((passed + 1))
    else
        log "FAIL: $name ($(($(date +%s) - start)) s), logs in $T"
        failed=$((failed + 1))
        failures+=("$name")
    fi
}

main() {
    local name tests=("$@")
    passed=0 failed=0 failures=()
    [ ${#tests[@]} -gt 0 ] || tests=("${ALL_TESTS[@]}")
    "$QEMU_DIR/prepare.sh" || {
        echo "0 passed, ${#tests[@]} failed"
        exit 1
    }
    if [ "$BACKEND" = keeld ]; then
        backend_build_keeld || {
            echo "0 passed, ${#tests[@]} failed"
            exit 1
        }
    fi
    mkdir -p "$WORK"
    for name in "${tests[@]}"; do
        if declare -F "test_$name" >/dev/null; then
            run_one "$name"
        else
            log "FAIL: no test named $name"
            failed=$((failed + 1))
            failures+=("$name")
        fi
    done
    [ $failed = 0 ] || log "failed: ${failures[*]}"
    echo "$passed passed, $failed failed"
    [ $failed = 0 ]
}

main "$@"
