# shellcheck shell=sh
# Two fio jobs pinned to two vCPUs (cpus_allowed split), each verifying its own half of a region,
# so that blk-mq submits on two hardware queues. Result "queues": the disk's hardware queue count
# and the interrupts each virtqueue raised during the run; the job fails unless every queue raised
# some. Parameter: keel.size (each job's region, default 32M).
size=${KEEL_SIZE:-32M}
nr_queues=$(ls -d /sys/block/vda/mq/[0-9]* | wc -l)
irqs() { grep -E 'virtio[0-9]+-req\.' /proc/interrupts | awk '{ s = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) s += $i; print $NF, s }'; }
irqs >/tmp/irq.before
cat >/tmp/mq.fio <<FIO
[global]
filename=/dev/vda
ioengine=libaio
direct=1
iodepth=8
rw=randwrite
bs=4k
size=$size
offset_increment=$size
verify=crc32c
do_verify=1
verify_fatal=1
randrepeat=0
cpus_allowed=0-$((nr_queues - 1))
cpus_allowed_policy=split

[per-cpu]
numjobs=$nr_queues
FIO
fio --eta=never --output-format=json --output=/tmp/fio.json /tmp/mq.fio
rc=$?
irqs >/tmp/irq.after
{
    echo "hw_queues $nr_queues"
    echo "online_cpus $(grep -c ^processor /proc/cpuinfo)"
    for q in /sys/block/vda/mq/[0-9]*; do
        echo "hctx ${q##*/} cpus $(cat "$q/cpu_list")"
    done
    awk 'NR == FNR { before[$1] = $2; next } { print "irqs", $1, $2 - before[$1] }' /tmp/irq.before /tmp/irq.after
} >/tmp/queues
result fio /tmp/fio.json
result queues /tmp/queues
[ $rc = 0 ] || exit $rc
used=$(awk '$1 == "irqs" && $3 > 0' /tmp/queues | wc -l)
[ "$used" -ge "$nr_queues" ] || exit 30
[ "$nr_queues" -ge 2 ] || exit 31
