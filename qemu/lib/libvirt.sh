# shellcheck shell=bash
# A private libvirt for the qemu tests: libvirtd (the QEMU driver, version 11 from
# bookworm-backports) started in the foreground in session mode by an unprivileged user the tests
# own, so nothing of the host's system libvirt (its config, its domains, its security labels) is
# touched, and QEMU, keeld and libvirtd all run as that user. Sourced after lib/common.sh.
#
#   libvirt_start DIR      creates the user if needed, gives it DIR (short: libvirt's sockets
#                          live under it) and starts libvirtd there
#   as_libvirt_user CMD... runs CMD as that user with the session's environment
#   lvirsh ARGS...         virsh on the session
#   libvirt_stop           destroys the test domains, stops libvirtd and removes DIR

LIBVIRT_USER=keel-test
LIBVIRT_DIR=''
LIBVIRTD_PID=''

# The user is created once; its home is not used (the session lives in the test's directory).
libvirt_user() {
    id "$LIBVIRT_USER" >/dev/null 2>&1 && return 0
    as_root useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        "$LIBVIRT_USER" || die "cannot create the user $LIBVIRT_USER"
}

as_libvirt_user() {
    as_root runuser -u "$LIBVIRT_USER" -- env HOME="$LIBVIRT_DIR" \
        XDG_CONFIG_HOME="$LIBVIRT_DIR/config" XDG_RUNTIME_DIR="$LIBVIRT_DIR/run" \
        XDG_CACHE_HOME="$LIBVIRT_DIR/cache" XDG_DATA_HOME="$LIBVIRT_DIR/data" "$@"
}

lvirsh() {
    as_libvirt_user virsh -q -c qemu:///session "$@"
}

libvirt_start() {
    LIBVIRT_DIR=$1
    command -v libvirtd >/dev/null || die "libvirtd is missing: qemu/prepare.sh installs it"
    libvirt_user
    mkdir -p "$LIBVIRT_DIR"/{config/libvirt,run,cache,data}
    # QEMU's own output goes to files in the session's log directory (no virtlogd to start).
    printf 'stdio_handler = "file"\n' >"$LIBVIRT_DIR/config/libvirt/qemu.conf"
    as_root chown -R "$LIBVIRT_USER" "$LIBVIRT_DIR"
    as_libvirt_user libvirtd >"$LIBVIRT_DIR/libvirtd.log" 2>&1 &
    LIBVIRTD_PID=$!
    local waited=0
    until lvirsh version >/dev/null 2>&1; do
        kill -0 "$LIBVIRTD_PID" 2>/dev/null || die "libvirtd exited: $(tail -n 5 "$LIBVIRT_DIR/libvirtd.log")"
        [ $waited -lt 100 ] || die "libvirtd did not answer within 10 s"
        sleep 0.1
        waited=$((waited + 1))
    done
}

libvirt_stop() {
    [ -n "$LIBVIRTD_PID" ] || return 0
    local d
    for d in $(lvirsh list --name 2>/dev/null); do
        lvirsh destroy "$d" >/dev/null 2>&1
    done
    for d in $(lvirsh list --all --name 2>/dev/null); do
        lvirsh undefine "$d" >/dev/null 2>&1
    done
    # runuser's child is libvirtd: end the whole session's processes.
    as_root pkill -TERM -u "$LIBVIRT_USER" -x libvirtd 2>/dev/null
    wait "$LIBVIRTD_PID" 2>/dev/null
    LIBVIRTD_PID=''
    rm -rf "$LIBVIRT_DIR"
}
