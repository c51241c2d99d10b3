# shellcheck shell=sh
# The benchmark set, one fio section after another (stonewall): 4k random reads and writes at
# queue depth 1 and 32, then 1M sequential writes at queue depth 8. No verification: this measures.
# Parameters: keel.runtime (seconds per section, default 5), keel.size (span of the disk, 256M).
runtime=${KEEL_RUNTIME:-5}
{
    cat <<FIO
[global]
filename=/dev/vda
ioengine=libaio
direct=1
time_based=1
runtime=$runtime
ramp_time=1
size=${KEEL_SIZE:-256M}
randrepeat=0
stonewall
FIO
    for section in randread:4k:1 randread:4k:32 randwrite:4k:1 randwrite:4k:32 write:1M:8; do
        rw=${section%%:*}
        rest=${section#*:}
        bs=${rest%%:*}
        qd=${rest#*:}
        printf '\n[%s-%s-qd%s]\nrw=%s\nbs=%s\niodepth=%s\n' "$rw" "$bs" "$qd" "$rw" "$bs" "$qd"
    done
} >/tmp/bench.fio
fio --eta=never --output-format=json --output=/tmp/fio.json /tmp/bench.fio
rc=$?
result fio /tmp/fio.json
exit $rc
