# fio write-then-verify on the raw disk: sequential 1M writes, random 4k writes and a random
# read/write mix, each verified with crc32c (fio aborts on the first bad block: verify_fatal).
# Parameters: keel.size (bytes of the disk each section covers, default 64M), keel.iodepth (16).
size=${KEEL_SIZE:-64M}
iodepth=${KEEL_IODEPTH:-16}
cat >/tmp/verify.fio <<FIO
[global]
filename=/dev/vda
ioengine=libaio
direct=1
iodepth=$iodepth
verify=crc32c
do_verify=1
verify_fatal=1
verify_dump=0
randrepeat=0
group_reporting=0

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

[randrw-verify]
stonewall
rw=randrw
rwmixread=50
bs=4k
offset=0
size=$size
FIO
fio --eta=never --output-format=json --output=/tmp/fio.json /tmp/verify.fio
rc=$?
result fio /tmp/fio.json
exit $rc
