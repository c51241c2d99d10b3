# shellcheck shell=sh
# fio write-and-verify on /dev/vda, then on a second disk the host plugs in while the guest runs
# (/dev/vdb), then waits until the host has unplugged it again, then for the ACPI power button.
# Marks tell the host when to plug (hotplug-ready), unplug (hotplug-verified) and shut down
# (shutdown-ready).
# Parameters: keel.size (bytes each fio section covers, default 16M), keel.wait (seconds to wait
#   for each plug and unplug, default 120).
size=${KEEL_SIZE:-16M}
wait_s=${KEEL_WAIT:-120}

verify() { # $1 = device, $2 = result name
    cat >/tmp/"$2".fio <<FIO
[global]
filename=$1
ioengine=libaio
direct=1
iodepth=16
verify=crc32c
do_verify=1
verify_fatal=1
verify_dump=0

[seq-write-verify]
rw=write
bs=1M
size=$size

[rand-write-verify]
stonewall
rw=randwrite
bs=4k
size=$size
FIO
    fio --eta=never --output-format=json --output=/tmp/"$2".json /tmp/"$2".fio
    rc=$?
    result "$2" /tmp/"$2".json
    return $rc
}

verify /dev/vda fio || exit 1
mark hotplug-ready
n=0
while [ ! -b /dev/vdb ]; do
    [ $n -ge "$wait_s" ] && { echo "keel: no /dev/vdb within ${wait_s}s"; exit 3; }
    sleep 1
    n=$((n + 1))
done
verify /dev/vdb fio-hotplug || exit 1
mark hotplug-verified
n=0
while [ -b /dev/vdb ]; do
    [ $n -ge "$wait_s" ] && { echo "keel: /dev/vdb still there after ${wait_s}s"; exit 4; }
    sleep 1
    n=$((n + 1))
done
mark unplugged
# Then waits for the ACPI power button (`virsh shutdown`): the first event of the input device
# the kernel names "Power Button" ends the job and the guest powers off.
button=''
for dev in /sys/class/input/event*; do
    [ "$(cat "$dev/device/name" 2>/dev/null)" = "Power Button" ] && button=/dev/input/${dev##*/}
done
[ -n "$button" ] || { echo "keel: no ACPI power button"; exit 5; }
mark shutdown-ready
dd if="$button" bs=24 count=1 of=/dev/null 2>/dev/null
mark power-button
exit 0
