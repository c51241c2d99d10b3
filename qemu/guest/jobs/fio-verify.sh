# shellcheck shell=sh
# fio write-and-verify on the raw disk, crc32c in every block (fio stops on the first bad block:
# verify_fatal). Sections, one after another: sequential 1M writes, random 4k writes, and (phase
# "all" only) a random 50/50 read/write mix.
# Parameters: keel.size (bytes each section covers, default 64M), keel.iodepth (16),
#   keel.phase: all (default: write, then verify, in one boot), write (write only), or verify
#   (verify only: checks what an earlier "write" boot wrote, e.g. across a server restart),
#   keel.fsync (flush after every N writes; default 0, never), keel.direct (1, the default: O_DIRECT;
#   0: through the guest's page cache, whose pages the device fills without the guest's CPU).
size=${KEEL_SIZE:-64M}
phase=${KEEL_PHASE:-all}
case $phase in
all) mode="do_verify=1" ;;
write) mode="do_verify=0" ;;
verify) mode="verify_only=1" ;;
*) echo "keel: unknown phase $phase"; exit 2 ;;
esac
cat >/tmp/verify.fio <<FIO
[global]
filename=/dev/vda
ioengine=libaio
direct=${KEEL_DIRECT:-1}
iodepth=${KEEL_IODEPTH:-16}
fsync=${KEEL_FSYNC:-0}
verify=crc32c
$mode
verify_fatal=1
verify_dump=0
randseed=${KEEL_SEED:-20260}

[seq-write-verify]
rw=write
bs=1M
offset=0
size=$size

[rand-write-verify]
stonewall
rw=randwrite
bs=4k
offset=$size
size=$size
FIO
if [ "$phase" = all ]; then
    cat >>/tmp/verify.fio <<FIO

[randrw-verify]
stonewall
rw=randrw
rwmixread=50
bs=4k
offset=0
size=$size
FIO
fi
fio --eta=never --output-format=json --output=/tmp/fio.json /tmp/verify.fio
rc=$?
result fio /tmp/fio.json
exit $rc
