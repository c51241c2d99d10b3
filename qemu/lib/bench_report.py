#!/usr/bin/env python3
"""Turns the fio JSON of repeated guest benchmark boots into medians and keeld/QSD ratios.

    bench_report.py DIR CONTEXT_JSON

DIR holds <backend>-<run>.json files (fio JSON from the guest's bench job). Prints a markdown
table, then one JSON document (also written to DIR/report.json) with every run's numbers, the
medians and the ratios keeld / qsd (IOPS and bandwidth: above 1 is better for keeld; latency:
below 1 is better for keeld).
"""

import json
import pathlib
import statistics
import sys

BACKENDS = ("keeld", "qsd")


def load(path):
    text = path.read_text(encoding="utf-8")
    return json.loads(text[text.find("{"):])


def job_numbers(job):
    d = job["write"] if job["write"]["io_bytes"] > job["read"]["io_bytes"] else job["read"]
    return {
        "iops": d["iops"],
        "bw_mib_s": d["bw"] / 1024,
        "lat_us": d["lat_ns"]["mean"] / 1000,
    }


def collect(directory):
    runs = {}  # backend -> workload -> list of numbers
    for path in sorted(directory.glob("*-*.json")):
        backend = path.stem.rsplit("-", 1)[0]
        if backend not in BACKENDS:
            continue
        for job in load(path)["jobs"]:
            if job.get("error", 0):
                raise SystemExit(f"{path}: job {job['jobname']} failed with error {job['error']}")
            runs.setdefault(backend, {}).setdefault(job["jobname"], []).append(job_numbers(job))
    return runs


def medians(runs):
    return {
        backend: {
            workload: {k: statistics.median(r[k] for r in results) for k in results[0]}
            for workload, results in workloads.items()
        }
        for backend, workloads in runs.items()
    }


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    directory = pathlib.Path(argv[0])
    context = json.loads(argv[1])
    runs = collect(directory)
    med = medians(runs)
    missing = [b for b in BACKENDS if b not in med]
    if missing:
        raise SystemExit(f"no results for {', '.join(missing)} in {directory}")
    workloads = list(med["keeld"])
    ratios = {}
    print("| workload | keeld IOPS | QSD IOPS | keeld MiB/s | QSD MiB/s | keeld lat us | QSD lat us | IOPS ratio | lat ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in workloads:
        k, q = med["keeld"][w], med["qsd"].get(w)
        if q is None:
            continue
        ratios[w] = {
            "iops": k["iops"] / q["iops"] if q["iops"] else None,
            "bw": k["bw_mib_s"] / q["bw_mib_s"] if q["bw_mib_s"] else None,
            "lat": k["lat_us"] / q["lat_us"] if q["lat_us"] else None,
        }
        r = ratios[w]
        print(
            f"| {w} | {k['iops']:.0f} | {q['iops']:.0f} | {k['bw_mib_s']:.1f} | {q['bw_mib_s']:.1f} "
            f"| {k['lat_us']:.0f} | {q['lat_us']:.0f} | {r['iops']:.2f} | {r['lat']:.2f} |"
        )
    report = {"context": context, "runs": runs, "medians": med, "ratios_keeld_over_qsd": ratios}
    (directory / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print()
    print(json.dumps({"context": context, "medians": med, "ratios_keeld_over_qsd": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
