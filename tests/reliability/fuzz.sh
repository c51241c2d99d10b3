#!/usr/bin/env bash
# Runs every Keel fuzz target for a bounded time from the committed corpus, prints the executions
# per target, and fails if any target crashes, hangs or leaks past its limits.
#
#   FUZZ_SECONDS=60 (per target; KEEL_FUZZ_SECONDS is read too)   FUZZ_TARGETS="desc_chain container vhost_frontend"
#
# A longer campaign: FUZZ_SECONDS=3600 bash tests/reliability/fuzz.sh
# Crash inputs land in fuzz/artifacts/<target>/; replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# and add it under fuzz/regressions/<target>/ once fixed (replayed by `cargo test` in fuzz/).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${FUZZ_SECONDS:-${KEEL_FUZZ_SECONDS:-60}}
targets=${FUZZ_TARGETS:-$(cd fuzz && cargo fuzz list 2>/dev/null | tr '\n' ' ')}
export RUSTC_BOOTSTRAP=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== replaying the corpus and saved crashes on stable Rust"
(cd fuzz && cargo test -q)
status=0
summary=""
for t in $targets; do
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    log="$work/$t.log"
    extra=()
    # keeld runs in-process for the whole campaign and ends sessions on its own threads, after
    # the input that closed them: LeakSanitizer would blame those frees on the wrong input.
    [ "$t" = vhost_frontend ] && extra+=(-detect_leaks=0)
    echo "== $t: ${seconds}s"
    if (cd fuzz && cargo fuzz run "$t" "$work/$t" "corpus/$t" -- \
            -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
            -print_final_stats=1 "${extra[@]}" >"$log" 2>&1); then
        result=ok
    else
        result=CRASH
        status=1
        cp "$log" "fuzz/artifacts/$t.log"
        grep -E 'panicked|ERROR|SUMMARY|Test unit written' "$log" | head -n 20
        echo "full log: fuzz/artifacts/$t.log"
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*' || echo "?")
    summary+=$(printf '%-16s %-6s execs=%-10s execs/s=%-7s cov=%s' "$t" "$result" "$execs" "$rate" "$cov")$'\n'
done
echo
echo "fuzz summary (${seconds}s per target):"
printf '%s' "$summary"
exit $status
