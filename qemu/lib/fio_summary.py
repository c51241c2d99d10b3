#!/usr/bin/env python3
"""Summarises fio JSON output collected from a guest.

    fio_summary.py FILE            prints one line per fio job (IOPS, bandwidth, latency, errors)
    fio_summary.py --check FILE    the same, and exits 1 when a job reported an error or did no I/O
    fio_summary.py --metric FILE   prints {"iops": ..., "bw_mib_s": ..., "lat_us": ...} summed over jobs

fio's JSON is taken as it is; a job that stopped on a verify failure carries a non-zero "error".
"""

import json
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # fio may print notices before the JSON document; the document starts at the first "{".
    start = text.find("{")
    if start < 0:
        raise ValueError(f"{path}: no JSON document")
    return json.loads(text[start:])


def directions(job):
    return [(d, job[d]) for d in ("read", "write") if job.get(d, {}).get("io_bytes", 0) > 0]


def job_line(job):
    parts = [f"{job['jobname']:<20}"]
    for name, d in directions(job):
        lat = d.get("lat_ns") or {}
        p99 = ((d.get("clat_ns") or {}).get("percentile") or {}).get("99.000000", 0)
        parts.append(
            f"{name} {d['iops']:9.0f} IOPS {d['bw'] / 1024:8.1f} MiB/s "
            f"lat {lat.get('mean', 0) / 1000:8.1f} us (clat p99 {p99 / 1000:.0f} us)"
        )
    parts.append(f"error {job.get('error', 0)}")
    return "  ".join(parts)


def metric(doc):
    iops = bw = lat_weighted = 0.0
    for job in doc["jobs"]:
        for _, d in directions(job):
            iops += d["iops"]
            bw += d["bw"] / 1024
            lat_weighted += d["iops"] * (d.get("lat_ns") or {}).get("mean", 0)
    lat_us = lat_weighted / iops / 1000 if iops else 0.0
    return {"iops": round(iops, 1), "bw_mib_s": round(bw, 2), "lat_us": round(lat_us, 1)}


def main(argv):
    mode = "print"
    if argv and argv[0] in ("--check", "--metric"):
        mode = argv.pop(0)
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    doc = load(argv[0])
    if mode == "--metric":
        print(json.dumps(metric(doc)))
        return 0
    failed = False
    for job in doc["jobs"]:
        print(job_line(job))
        if job.get("error", 0) != 0 or not directions(job):
            failed = True
    if mode == "--check" and failed:
        print("fio reported an error or a job did no I/O", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
