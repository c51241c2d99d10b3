#!/usr/bin/env python3
"""The report of qemu/migration_bench.sh: a table per run, medians per server, one JSON line.

  migration_report.py RUNS-FILE CONTEXT-JSON

RUNS-FILE has a line per run: "KIND RUN STATUS OFFSET-MS <qmp.py migration output> gaps=FILE",
OFFSET-MS being the host time from the guest's fio-start mark to the migrate command. FILE is the
guest's "gaps" result (see qemu/guest/jobs/fio-migrate.sh).

The I/O pause of a run is the longest gap between consecutive completions that overlaps the
migration's window in guest time: from 1 s before the migrate command (the mark and fio's own
start differ by a fraction of a second) to 1 s after the migration's total time. The longest gap
outside that window is given as the baseline: what the guest sees without a migration. Gaps under
5 ms are not logged by the guest, so a baseline of 5 means "under 5 ms".
"""
import json
import statistics
import sys

MARGIN_MS = 1000
GAP_FLOOR_MS = 5


def parse_run(line):
    words = line.split()
    run = {"server": words[0], "run": int(words[1]), "status": words[2], "offset_ms": int(words[3])}
    fields = dict(zip(words[4::2], words[5::2]))
    for key, name in (("total-time-ms", "total_ms"), ("downtime-ms", "downtime_ms")):
        value = fields.get(key, "-")
        run[name] = int(value) if value.isdigit() and fields.get("status") == "completed" else None
    gaps_file = next((w[len("gaps="):] for w in words if w.startswith("gaps=")), None)
    if run["status"] == "completed" and run["total_ms"] is not None and gaps_file:
        run.update(measure_pause(gaps_file, run["offset_ms"], run["total_ms"]))
    return run


def measure_pause(path, offset_ms, total_ms):
    """The longest completion gap inside the migration's window and the longest outside it."""
    try:
        with open(path) as f:
            lines = [line.split() for line in f if line.strip()]
    except OSError:
        return {"status": "no-gaps-result"}
    span = next((line for line in lines if line[0] == "span"), None)
    if span is None or int(span[3]) == 0:
        return {"status": "no-completions-logged"}
    low, high = offset_ms - MARGIN_MS, offset_ms + total_ms + MARGIN_MS
    inside, outside = [GAP_FLOOR_MS], [GAP_FLOOR_MS]
    for line in lines:
        if line[0] != "gap":
            continue
        end, length = int(line[1]), int(line[2])
        (inside if end >= low and end - length <= high else outside).append(length)
    return {
        "max_gap_ms": max(inside),
        "baseline_gap_ms": max(outside),
        "fio_span_ms": int(span[2]) - int(span[1]),
        "completions": int(span[3]),
    }


def median(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def show(value):
    return "-" if value is None else f"{value:g}"


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        runs = [parse_run(line) for line in f if line.strip()]
    context = json.loads(argv[2])
    keys = ("total_ms", "downtime_ms", "max_gap_ms", "baseline_gap_ms")
    print("| server | run | status | total ms | downtime ms | max I/O gap ms | baseline gap ms |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        cells = [r["server"], r["run"], r["status"], *(show(r.get(k)) for k in keys)]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    medians = {}
    for server in dict.fromkeys(r["server"] for r in runs):
        mine = [r for r in runs if r["server"] == server]
        ok = [r for r in mine if r["status"] == "completed"]
        # Migration times count whenever QEMU completed the migration, even if the guest's I/O
        # did not survive it; the I/O pause only where fio finished.
        medians[server] = {k: median(mine, k) for k in keys[:2]}
        medians[server].update({k: median(ok, k) for k in keys[2:]})
        medians[server]["completed_runs"] = len(ok)
        cells = [server, "median", f"{len(ok)} ok", *(show(medians[server][k]) for k in keys)]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(json.dumps({"context": context, "runs": runs, "medians": medians}, sort_keys=True))
    failed = [r for r in runs if r["status"] != "completed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
