# shellcheck shell=sh
# fio write-and-verify on fixed regions of the disk, crc32c in every block (verify_fatal), for the
# mirror test: each phase writes only its own regions, so the host knows exactly which bytes a
# phase dirtied, and the last phase checks every region at once.
# Parameters: keel.phase:
#   fill    writes and verifies [0, 64M): 32M sequential 1M writes, then 32M random 4k writes;
#   around  writes and verifies [64M, 72M) the same way (4M + 4M): 8 MiB, 128 chunks of 64 KiB;
#   verify  reads and checks all four regions (what fill and around wrote).
phase=${KEEL_PHASE:-fill}
case $phase in
fill | around) mode="do_verify=1" ;;
verify) mode="verify_only=1" ;;
*) echo "keel: unknown phase $phase"; exit 2 ;;
esac
cat >/tmp/mirror.fio <<FIO
[global]
filename=/dev/vda
ioengine=libaio
direct=1
iodepth=16
verify=crc32c
$mode
verify_fatal=1
verify_dump=0
randseed=20261
FIO
# region NAME RW BS OFFSET SIZE: one section, after the previous one has finished.
region() {
    cat >>/tmp/mirror.fio <<FIO

[$1]
stonewall
rw=$2
bs=$3
offset=$4
size=$5
FIO
}
if [ "$phase" != around ]; then
    region fill-seq write 1M 0 32M
    region fill-rand randwrite 4k 32M 32M
fi
if [ "$phase" != fill ]; then
    region around-seq write 1M 64M 4M
    region around-rand randwrite 4k 68M 4M
fi
fio --eta=never --output-format=json --output=/tmp/fio.json /tmp/mirror.fio
rc=$?
result fio /tmp/fio.json
exit $rc
