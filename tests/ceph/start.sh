#!/usr/bin/env bash
# Starts a single-node Ceph cluster for Keel's tests and benchmarks, without systemd or cephadm:
# one mon on 127.0.0.1 (msgr2, a free port), one OSD on bluestore over a sparse file, `auth =
# none`, pool `rbd` of size 1. Everything lives in DIR and runs as the calling user.
#
#   tests/ceph/start.sh DIR [OWNER_PID]
#   KEEL_CEPH_AUTH=cephx tests/ceph/start.sh DIR [OWNER_PID]
#
# With KEEL_CEPH_AUTH=cephx the cluster requires cephx everywhere: DIR/keyring holds the mon.
# and client.admin keys (ceph.conf names it), and DIR/client.keel.keyring a client.keel key
# limited to `profile rbd` on pool rbd.
#
# Prints the path of the cluster's ceph.conf on success. With OWNER_PID, a watcher stops the
# cluster (tests/ceph/stop.sh DIR) once that process is gone, so a test binary that exits in any
# way leaves no Ceph process behind. Packages: qemu/prepare.sh installs ceph-mon and ceph-osd.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:?usage: start.sh DIR [OWNER_PID]}
owner=${2:-}
# Sparse: bluestore writes only what the tests use. KEEL_CEPH_BLOCK_WRITTEN=1 writes the whole
# file first (benchmarks: no first-touch allocation in the file system under a measured run).
BLOCK_SIZE=${KEEL_CEPH_BLOCK_SIZE:-3G}
BLOCK_WRITTEN=${KEEL_CEPH_BLOCK_WRITTEN:-0}
AUTH=${KEEL_CEPH_AUTH:-none}
case "$AUTH" in none | cephx) ;; *) echo "KEEL_CEPH_AUTH must be none or cephx" >&2; exit 1 ;; esac

die() { echo "tests/ceph/start.sh: $*" >&2; exit 1; }
for p in ceph-mon ceph-osd ceph monmaptool rbd rados; do
    command -v "$p" >/dev/null || die "$p is missing: run qemu/prepare.sh (it installs ceph-mon and ceph-osd)"
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
[ -e "$dir/ceph.conf" ] && die "$dir already holds a cluster"
mkdir -p "$dir/run" "$dir/mon" "$dir/osd"

# A free loopback port: bind one and let it go (the mon binds it a moment later).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fsid=$(cat /proc/sys/kernel/random/uuid)

cat >"$dir/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
auth cluster required = $AUTH
auth service required = $AUTH
auth client required = $AUTH
keyring = $dir/keyring
ms bind ipv6 = false
ms bind msgr1 = false
run dir = $dir/run
log file = $dir/\$name.log
pid file = $dir/run/\$name.pid
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
# No ceph-mgr runs: without a long grace, health turns to MGR_DOWN after a minute or two.
mon mgr mkfs grace = 315360000
# Proposals every 100 ms instead of 1 s: pool creation takes well under a second.
paxos propose interval = 0.1
# The test machine's disk may be fullish: the mon must not stop for it.
mon data avail warn = 1
mon data avail crit = 0
# A lost client must not hold its lock for long.
client mount timeout = 30

[mon]
mon data = $dir/mon/\$name
admin socket = $dir/run/\$name.asok

[osd]
# A killed client's watch (and with it its claim on an image's exclusive lock) expires after
# this long; 30 s by default, shortened so the kill -9 tests restart quickly.
osd client watch timeout = 5
osd data = $dir/osd/\$name
keyring = $dir/osd/\$name/keyring
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $BLOCK_SIZE
bluestore fsck on mount = false
osd memory target = 939524096
admin socket = $dir/run/\$name.asok
CONF
conf=$dir/ceph.conf
ceph=(ceph -c "$conf" --connect-timeout 20)

started=0
cleanup_on_failure() {
    if [ "$started" = 0 ]; then
        "$here/stop.sh" "$dir" >/dev/null 2>&1 || true
    fi
}
trap cleanup_on_failure EXIT

# The mon. and client.admin keys (unused with auth none, but harmless).
ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$dir/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
    --cap mgr 'allow *' >/dev/null

monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$dir/monmap" >/dev/null
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" >"$dir/mon-mkfs.log" 2>&1 ||
    die "ceph-mon --mkfs failed: $(tail -n 5 "$dir/mon-mkfs.log")"
ceph-mon -c "$conf" -i a || die "ceph-mon did not start: $(tail -n 5 "$dir/mon.a.log")"

uuid=$(cat /proc/sys/kernel/random/uuid)
id=$("${ceph[@]}" osd new "$uuid")
mkdir -p "$dir/osd/osd.$id"
ceph-authtool --create-keyring "$dir/osd/osd.$id/keyring" --gen-key -n "osd.$id" >/dev/null
"${ceph[@]}" auth add "osd.$id" osd 'allow *' mon 'allow profile osd' \
    -i "$dir/osd/osd.$id/keyring" >/dev/null 2>&1 || die "cannot register osd.$id's key"
if [ "$BLOCK_WRITTEN" = 1 ]; then
    head -c "$(numfmt --from=iec "$BLOCK_SIZE")" /dev/zero >"$dir/osd/osd.$id/block"
    sync "$dir/osd/osd.$id/block"
fi
ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$uuid" >"$dir/osd-mkfs.log" 2>&1 ||
    die "ceph-osd --mkfs failed: $(tail -n 5 "$dir/osd-mkfs.log")"
ceph-osd -c "$conf" -i "$id" || die "ceph-osd did not start: $(tail -n 5 "$dir/osd.$id.log")"

"${ceph[@]}" osd pool create rbd 8 8 >/dev/null 2>&1
timeout 60 rbd -c "$conf" pool init rbd || die "rbd pool init failed"

# The OSD is up and the pool's placement groups active once an object write goes through
# (`ceph pg stat` would need a ceph-mgr).
echo probe >"$dir/probe"
timeout 120 rados -c "$conf" -p rbd put keel-probe "$dir/probe" ||
    die "no write reached the OSD in 120 s: $(tail -n 5 "$dir/osd.$id.log")"
rados -c "$conf" -p rbd rm keel-probe
"${ceph[@]}" auth get-or-create client.keel mon 'profile rbd' osd 'profile rbd pool=rbd' \
    -o "$dir/client.keel.keyring" >/dev/null 2>&1 || die "cannot create client.keel"

if [ -n "$owner" ]; then
    # Detached from the caller's pipes so a test harness reading them is not held open.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2/stop.sh" "$3"' \
        _ "$owner" "$here" "$dir" </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/run/watcher.pid"
fi
started=1
echo "$conf"
