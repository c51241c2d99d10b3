# shellcheck shell=bash
# Shared paths and helpers for the qemu/ scripts. Sourced, never run.

QEMU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034
REPO_DIR=$(cd "$QEMU_DIR/.." && pwd)
# The server guests boot on unless KEEL_BACKEND says otherwise: keeld or qsd (qemu-storage-daemon).
# shellcheck disable=SC2034
DEFAULT_BACKEND=keeld
CACHE_DIR=${KEEL_QEMU_CACHE:-$QEMU_DIR/.cache}
# shellcheck disable=SC2034
KERNEL_IMAGE=$CACHE_DIR/vmlinuz
# shellcheck disable=SC2034
INITRAMFS_IMAGE=$CACHE_DIR/initramfs.cpio

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

# Major version of qemu-storage-daemon, or 0 when it is missing.
qsd_major() {
    local v
    v=$(qemu-storage-daemon --version 2>/dev/null | sed -n 's/^qemu-storage-daemon version \([0-9]*\)\..*/\1/p')
    echo "${v:-0}"
}

# Major version of qemu-system-x86_64, or 0 when it is missing.
qemu_major() {
    local v
    v=$(qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
    echo "${v:-0}"
}

# A unix socket path no longer than the kernel's limit (108 bytes): PATH itself when it is short,
# otherwise a name under $TMPDIR derived from it.
socket_path() {
    if [ ${#1} -lt 100 ]; then
        echo "$1"
    else
        echo "${TMPDIR:-/tmp}/keel-$(echo "$1" | sha256sum | cut -c1-16).sock"
    fi
}

# Writes each KEEL-RESULT-BEGIN NAME ... KEEL-RESULT-END block of the guest console LOG into
# DIR/NAME (the guest prints its results on the console; see guest/init).
extract_results() {
    local log=$1 dir=$2
    rm -rf "$dir"
    mkdir -p "$dir"
    tr -d '\r' <"$log" | awk -v dir="$dir" '
        /^KEEL-RESULT-BEGIN [A-Za-z0-9_-][A-Za-z0-9._-]*$/ { file = dir "/" $2; printf "" > file; next }
        /^KEEL-RESULT-END / { if (file != "") close(file); file = ""; next }
        file != "" { print >> file }'
}

# The status the guest reported on console LOG (KEEL-STATUS N), or nothing.
guest_status() {
    tr -d '\r' <"$1" | sed -n 's/^KEEL-STATUS \([0-9]*\)$/\1/p' | tail -n 1
}
