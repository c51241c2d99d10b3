#!/usr/bin/env bash
# keeld against qemu-storage-daemon's vhost-user-blk export, same client, same workloads.
# Builds release binaries, then runs tests/src/bin/vs_qsd.rs (null and raw rows, median of
# --runs runs, fio on the host file as the device's limit). Extra arguments go to vs_qsd:
#   --runs N (3)  --runtime SECS (5)  --dir DIR ($TMPDIR/keel-bench)  --image-size GIB (1)  --no-fio
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon not found" >&2; exit 1; }
command -v fio >/dev/null || echo "fio not found (apt-get install -y fio): host rows skipped" >&2
cargo build --release -q -p keel-backend --bin keeld -p keel-tests --bin vs_qsd --bin blk_bench
exec ./target/release/vs_qsd "$@"
