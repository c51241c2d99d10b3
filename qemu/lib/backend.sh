# shellcheck shell=bash
# Starts and stops the vhost-user-blk server a guest boots on: keeld (Keel) or qemu-storage-daemon.
# Sourced after lib/common.sh, never run.
#
#   backend_start KIND DIR IMAGE SOCKET QUEUES [SIZE [ENGINE]]
#       KIND is keeld or qsd. Creates IMAGE as a sparse file of SIZE (default 1G) when it is
#       missing, starts the server in the background with its log in DIR/KIND.log and waits for
#       SOCKET. Sets BACKEND_PID and BACKEND_KIND. ENGINE is keeld's engine (default raw).
#       KEELD_DISK_EXTRA, if set, is appended to keeld's disk table (e.g. "delay_us = 20000").
#       QSD_SECOND_SOCKET, if set, gives qemu-storage-daemon a second writable vhost-user-blk
#       export of the same node on that socket (a live migration's destination attaches to it).
#   backend_stop [SIGNAL]
#       Sends SIGNAL (default TERM) and waits for the server; returns its exit status (a TERM that
#       does not end it within 30 s is followed by KILL and fails).

KEELD_BIN=${KEELD_BIN:-$REPO_DIR/target/release/keeld}
BACKEND_PID=''
BACKEND_KIND=''

# Builds keeld in release mode unless KEELD_BIN points at an existing binary already.
backend_build_keeld() {
    if [ -n "${KEEL_SKIP_BUILD:-}" ] && [ -x "$KEELD_BIN" ]; then
        return 0
    fi
    log "building keeld (release)"
    (cd "$REPO_DIR" && cargo build --release -q -p keel-backend --bin keeld) || die "cargo build of keeld failed"
}

backend_write_keeld_config() {
    local config=$1 image=$2 socket=$3 queues=$4 size=$5 engine=$6 storage
    # An rbd disk names its image (POOL/NAME) and the cluster (CEPH_CONF); the others a file.
    if [ "$engine" = rbd ]; then
        storage="image = \"$image\"
ceph_conf = \"${CEPH_CONF:?an rbd disk needs CEPH_CONF}\""
    else
        storage="path = \"$image\""
    fi
    cat >"$config" <<EOF
# Written by qemu/lib/backend.sh: one disk for a test guest.
[[disk]]
name = "vda"
socket = "$socket"
engine = "$engine"
$storage
size = "$size"
queues = $queues
queue_size = 256
read_only = false
direct = true
${KEELD_DISK_EXTRA:-}
EOF
}

backend_start() {
    local kind=$1 dir=$2 image=$3 socket=$4 queues=$5 size=${6:-1G} engine=${7:-raw} waited=0
    mkdir -p "$dir"
    # A raw image is made here; keeld creates a missing keel container or rbd image itself.
    [ -e "$image" ] || [ "$engine" = keel ] || [ "$engine" = rbd ] || truncate -s "$size" "$image"
    rm -f "$socket"
    case $kind in
    keeld)
        [ -x "$KEELD_BIN" ] || die "no keeld binary at $KEELD_BIN"
        backend_write_keeld_config "$dir/keel.toml" "$image" "$socket" "$queues" "$size" "$engine"
        RUST_LOG=${RUST_LOG:-info} "$KEELD_BIN" --config "$dir/keel.toml" >>"$dir/keeld.log" 2>&1 &
        ;;
    qsd)
        qemu-storage-daemon \
            --blockdev "driver=file,filename=$image,node-name=file0,cache.direct=on,aio=io_uring" \
            --export "type=vhost-user-blk,id=export0,node-name=file0,addr.type=unix,addr.path=$socket,writable=on,num-queues=$queues" \
            ${QSD_SECOND_SOCKET:+--export "type=vhost-user-blk,id=export1,node-name=file0,addr.type=unix,addr.path=$QSD_SECOND_SOCKET,writable=on,num-queues=$queues"} \
            >>"$dir/qsd.log" 2>&1 &
        ;;
    *) die "unknown backend '$kind' (keeld or qsd)" ;;
    esac
    BACKEND_PID=$!
    BACKEND_KIND=$kind
    while [ ! -S "$socket" ]; do
        if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
            wait "$BACKEND_PID" || true
            BACKEND_PID=''
            tail -n 20 "$dir/$kind.log" >&2
            die "$kind exited before creating $socket"
        fi
        waited=$((waited + 1))
        [ $waited -le 300 ] || die "$kind did not create $socket within 30 s"
        sleep 0.1
    done
    log "$kind serving $image on $socket (pid $BACKEND_PID, $queues queue(s))"
}

backend_stop() {
    local signal=${1:-TERM} pid=$BACKEND_PID status=0 waited=0
    [ -n "$pid" ] || return 0
    BACKEND_PID=''
    kill -"$signal" "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ $waited -lt 300 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$BACKEND_KIND (pid $pid) ignored SIG$signal for 30 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        { wait "$pid"; } 2>/dev/null || true
        return 1
    fi
    { wait "$pid"; } 2>/dev/null || status=$?
    log "$BACKEND_KIND (pid $pid) stopped by SIG$signal, exit status $status"
    return $status
}
