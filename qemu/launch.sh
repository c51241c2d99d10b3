#!/usr/bin/env bash
# Boots the Keel test guest on a vhost-user-blk socket, runs one job in it, and collects its results.
#
#   qemu/launch.sh --socket PATH --job NAME [--param key=value]... [--queues N] [--cpus N]
#                  [--mem SIZE] [--log FILE] [--results DIR] [--timeout SECONDS]
#                  [--reconnect-ms MS] [--pidfile FILE] [--qmp SOCKET] [--incoming URI]
#                  [--append KERNEL-ARGS] [--kvm]
#
# --qmp opens a QMP socket (qemu/lib/qmp.py talks to it); --incoming starts a live migration's
# destination, which waits for the guest's state instead of booting it; --append adds kernel
# arguments.
#
# Guest RAM is a shared memfd (vhost-user needs the backend to map it). The serial console goes to
# --log; every KEEL-RESULT-BEGIN/END block in it is written to --results/<name>. The exit status is
# the job's own (KEEL-STATUS), 124 when the timeout hit, 2 when the guest never reported a status.
# qemu/prepare.sh must have run (launch.sh runs it when the kernel or initramfs is missing).
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "$0")/lib/common.sh"

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

pidfile='' qmp='' incoming='' append='' socket='' job='' queues=1 cpus='' mem=512M log='' results='' timeout_s=300 reconnect='' accel=tcg
params=()
while [ $# -gt 0 ]; do
    case $1 in
    --socket) socket=$2; shift 2 ;;
    --job) job=$2; shift 2 ;;
    --param) params+=("$2"); shift 2 ;;
    --queues) queues=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --reconnect-ms) reconnect=$2; shift 2 ;;
    --pidfile) pidfile=$2; shift 2 ;;
    --qmp) qmp=$2; shift 2 ;;
    --incoming) incoming=$2; shift 2 ;;
    --append) append=$2; shift 2 ;;
    --kvm) accel=kvm; shift ;;
    -h | --help) usage ;;
    *) log "unknown argument: $1"; usage ;;
    esac
done
[ -n "$socket" ] && [ -n "$job" ] || usage
[ -S "$socket" ] || die "no vhost-user socket at $socket"
cpus=${cpus:-$queues}
log=${log:-$(mktemp --tmpdir keel-guest.XXXXXX.log)}
results=${results:-${log%.log}.results}

if [ ! -f "$KERNEL_IMAGE" ] || [ ! -f "$INITRAMFS_IMAGE" ]; then
    "$QEMU_DIR/prepare.sh"
fi

cmdline="console=ttyS0 panic=-1 keel.job=$job${append:+ $append}"
for p in "${params[@]+"${params[@]}"}"; do
    cmdline+=" keel.$p"
done

if [ "$accel" = kvm ]; then
    accel_args=(-accel kvm -cpu "${KEEL_KVM_CPU:-host}")
else
    # shellcheck disable=SC2054 # commas belong to the -accel option
    accel_args=(-accel tcg,thread=multi -cpu max)
fi
extra=()
[ -n "$pidfile" ] && extra+=(-pidfile "$pidfile")
[ -n "$qmp" ] && extra+=(-qmp "unix:$qmp,server=on,wait=off")
[ -n "$incoming" ] && extra+=(-incoming "$incoming")
chardev="socket,id=disk0,path=$socket"
[ -n "$reconnect" ] && chardev+=",reconnect-ms=$reconnect"

mkdir -p "$(dirname "$log")"
: >"$log"
log "booting job $job on $socket ($queues queue(s), $cpus vCPU(s), $accel), console: $log"
set +e
timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 \
    -nodefaults -no-user-config -no-reboot -display none \
    "${accel_args[@]}" -smp "$cpus" -m "$mem" \
    -object "memory-backend-memfd,id=mem,size=$mem,share=on" -machine pc,memory-backend=mem \
    -kernel "$KERNEL_IMAGE" -initrd "$INITRAMFS_IMAGE" -append "$cmdline" \
    -chardev "file,id=console,path=$log" -serial chardev:console \
    -chardev "$chardev" \
    -device "vhost-user-blk-pci,chardev=disk0,num-queues=$queues" \
    "${extra[@]+"${extra[@]}"}"
qemu_status=$?
set -e

extract_results "$log" "$results"

if [ "$qemu_status" = 124 ]; then
    log "job $job: timed out after ${timeout_s}s"
    exit 124
fi
status=$(guest_status "$log")
if [ -z "$status" ]; then
    log "job $job: the guest reported no status (exit $qemu_status); last console lines:"
    tail -n 20 "$log" >&2
    exit 2
fi
log "job $job: status $status"
exit "$status"
