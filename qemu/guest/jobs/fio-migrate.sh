# shellcheck shell=sh
# The live-migration benchmark's workload: fio 4k random writes at queue depth 16 over one span of
# the raw disk, crc32c in every block, then the verify reads of that span (fio stops on the first
# bad block). fio logs the completion time of every I/O (write_lat_log, log_avg_msec=0); the guest
# reduces that log to the pauses between completions, which the host compares with the migration.
# A watchdog reads the disk's counters every second: when requests are in flight and none has
# completed for keel.stall seconds (default 30), fio will not finish (a request lost on the way),
# so the job prints a "stall" result and exits 75 instead of hanging until the host's timeout.
# Parameters: keel.size (span, default 64M), keel.iodepth (16), keel.stall (30).
# Results: "fio" (fio's JSON) and "gaps": a line "span FIRST_MS LAST_MS COUNT" (guest time since
# fio started, completions logged), then "gap END_MS LENGTH_MS" for every pause of 5 ms or more
# between two consecutive completions (END_MS: the completion that ended the pause).
# Times are the guest's clock, which does not advance while QEMU has the guest stopped.
cat >/tmp/migrate.fio <<FIO
[global]
filename=/dev/vda
ioengine=libaio
direct=1
iodepth=${KEEL_IODEPTH:-16}
verify=crc32c
do_verify=1
verify_fatal=1
verify_dump=0
randseed=20261

[randwrite-verify]
rw=randwrite
bs=4k
offset=0
size=${KEEL_SIZE:-64M}
write_lat_log=/tmp/io
log_avg_msec=0
FIO
mark fio-start
fio --eta=never --output-format=json --output=/tmp/fio.json /tmp/migrate.fio &
fio_pid=$!
# /sys/block/vda/stat: field 1 reads completed, 5 writes completed, 9 requests in flight.
done_before='' still=0
while kill -0 $fio_pid 2>/dev/null; do
    sleep 1
    # shellcheck disable=SC2046 # the counters, one word each
    set -- $(cat /sys/block/vda/stat)
    if [ "$9" -gt 0 ] && [ "$(($1 + $5))" = "$done_before" ]; then
        still=$((still + 1))
    else
        still=0
    fi
    done_before=$(($1 + $5))
    if [ $still -ge "${KEEL_STALL:-30}" ]; then
        echo "no completion for $still s with $9 request(s) in flight; $done_before completed" >/tmp/stall
        result stall /tmp/stall
        exit 75
    fi
done
wait $fio_pid
rc=$?
result fio /tmp/fio.json
# One completion per line: "time_ms, latency, direction, block size, ...", in completion order.
awk -F, '
    { t = $1 + 0; n++
      if (n == 1) first = t; else if (t - last >= 5) printf "gap %d %d\n", t, t - last
      last = t }
    END { printf "span %d %d %d\n", first, last, n }' /tmp/io_clat.1.log >/tmp/gaps.unsorted
{ grep '^span' /tmp/gaps.unsorted; grep '^gap' /tmp/gaps.unsorted; } >/tmp/gaps
result gaps /tmp/gaps
exit $rc
