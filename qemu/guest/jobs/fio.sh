# shellcheck shell=sh
# One fio workload without verification, for benchmarks and the main job's short run.
# Parameters: keel.rw (randread), keel.bs (4k), keel.iodepth (1), keel.runtime (seconds, 10),
# keel.size (span of the disk used, 256M), keel.numjobs (1), keel.ioengine (libaio).
cat >/tmp/job.fio <<FIO
[global]
filename=/dev/vda
ioengine=${KEEL_IOENGINE:-libaio}
direct=1
time_based=1
runtime=${KEEL_RUNTIME:-10}
ramp_time=${KEEL_RAMP:-1}
size=${KEEL_SIZE:-256M}
group_reporting=1
randrepeat=0

[${KEEL_RW:-randread}-${KEEL_BS:-4k}-qd${KEEL_IODEPTH:-1}]
rw=${KEEL_RW:-randread}
bs=${KEEL_BS:-4k}
iodepth=${KEEL_IODEPTH:-1}
numjobs=${KEEL_NUMJOBS:-1}
FIO
fio --eta=never --output-format=json --output=/tmp/fio.json /tmp/job.fio
rc=$?
result fio /tmp/fio.json
exit $rc
