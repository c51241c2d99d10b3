# shellcheck shell=sh
# Phase 2 of the ext4 check: replay the journal if the file system was not unmounted (as a boot
# after a crash would), then fsck.ext4 -n -f must find it clean, and the files written in phase 1
# must match their recorded sums. Results: "fsck" (fsck's output) and "sums" (sums recomputed now).
fsck.ext4 -E journal_only -y /dev/vda >/tmp/replay 2>&1
fsck.ext4 -n -f /dev/vda >/tmp/fsck 2>&1
fsck_status=$?
echo "fsck-status $fsck_status" >>/tmp/fsck
result fsck /tmp/fsck
[ $fsck_status = 0 ] || exit 20
mount -t ext4 -o ro /dev/vda /mnt || exit 21
(cd /mnt && find data -type f | sort | xargs sha256sum) >/tmp/sums
result sums /tmp/sums
(cd /mnt && sha256sum -c -s SHA256SUMS) || exit 22
umount /mnt
