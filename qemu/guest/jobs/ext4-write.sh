# shellcheck shell=sh
# Phase 1 of the ext4 check: make a file system on the disk, write files of random content, record
# their sha256 sums (in SHA256SUMS on the disk and in the "sums" result), sync, and print the mark
# "synced". Then, by keel.hold:
#   0 (default)  unmount and power off;
#   busy         keep writing more files, unsynced, until the host kills the server and the guest.
mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/vda || exit 10
mount -t ext4 /dev/vda /mnt || exit 11
mkdir -p /mnt/data/a/b /mnt/data/c || exit 12
i=1
while [ $i -le "${KEEL_FILES:-24}" ]; do
    case $((i % 3)) in
    0) dir=/mnt/data ;;
    1) dir=/mnt/data/a/b ;;
    *) dir=/mnt/data/c ;;
    esac
    # Sizes from 4 KiB to ~2 MiB, with some odd tails that end mid-block.
    dd if=/dev/urandom of=$dir/file$i bs=4k count=$(((i * 37) % 512 + 1)) 2>/dev/null || exit 13
    head -c $((i * 511)) /dev/urandom >>$dir/file$i || exit 13
    i=$((i + 1))
done
dd if=/dev/urandom of=/mnt/data/big bs=1M count="${KEEL_BIG_MIB:-16}" 2>/dev/null || exit 13
(cd /mnt && find data -type f | sort | xargs sha256sum) >/tmp/sums || exit 14
cp /tmp/sums /mnt/SHA256SUMS || exit 14
sync || exit 15
result sums /tmp/sums
mark synced
if [ "${KEEL_HOLD:-0}" = busy ]; then
    mkdir -p /mnt/scratch
    n=0
    while :; do
        n=$((n + 1))
        dd if=/dev/urandom of=/mnt/scratch/f$((n % 64)) bs=64k count=16 2>/dev/null
    done
fi
umount /mnt || exit 16
