# shellcheck shell=sh
# Online growth as the guest sees it: prints the disk's size in 512-byte sectors (result
# "size-before"), the mark "sized", then waits up to keel.wait seconds (default 60) for the size
# to change, prints it ("size-after"), and writes and reads back one random 4 KiB block at the
# new end. Exits non-zero if the size never changed or the block did not read back.
before=$(cat /sys/block/vda/size)
echo "$before" >/tmp/before
result size-before /tmp/before
mark sized
waited=0
while [ "$(cat /sys/block/vda/size)" = "$before" ] && [ $waited -lt "${KEEL_WAIT:-60}" ]; do
    sleep 1
    waited=$((waited + 1))
done
after=$(cat /sys/block/vda/size)
echo "$after" >/tmp/after
result size-after /tmp/after
[ "$after" != "$before" ] || exit 20
last=$((after / 8 - 1))
head -c 4096 /dev/urandom >/tmp/block
dd if=/tmp/block of=/dev/vda bs=4096 seek=$last count=1 oflag=direct conv=notrunc 2>/dev/null || exit 21
dd if=/dev/vda of=/tmp/back bs=4096 skip=$last count=1 iflag=direct 2>/dev/null || exit 22
cmp /tmp/block /tmp/back || exit 23
