#!/usr/bin/env bash
# Runs every Keel test: formatting, lints, unit, property, crash and whole-system tests, the
# QEMU guest tests and bounded fuzz runs. Installs what it needs first (idempotent). CI runs
# exactly this. A missing tool is a failure, never a skip.
#
#   KEEL_SKIP_GUEST=1   leave out the QEMU guest tests (for a quick local run; never in CI)
#   KEEL_FUZZ_SECONDS   seconds per fuzz target (default 45)
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==== %s\n' "$*"; }

step "installing what the tests need"
bash qemu/prepare.sh
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "unit, property, crash and whole-system tests"
cargo build --workspace --all-targets
cargo test --workspace

step "the storage core's tests (model, crash, corruption, snapshots, clone, diff) on encrypted containers"
KEEL_TEST_ENCRYPTED=1 cargo test -p keel-backend --lib store::

step "the storage core's tests on compressed containers (zstd encrypted, lz4 plain)"
KEEL_TEST_COMPRESSION=zstd KEEL_TEST_ENCRYPTED=1 cargo test -p keel-backend --lib store::
KEEL_TEST_COMPRESSION=lz4 cargo test -p keel-backend --lib store::

if [ "${KEEL_SKIP_GUEST:-0}" = 1 ] && [ "${CI:-}" != true ]; then
    step "QEMU guest tests skipped (KEEL_SKIP_GUEST=1)"
else
    step "QEMU guest tests"
    bash qemu/test.sh
fi

if [ -x tests/reliability/fuzz.sh ]; then
    step "bounded fuzz runs"
    KEEL_FUZZ_SECONDS=${KEEL_FUZZ_SECONDS:-45} bash tests/reliability/fuzz.sh
fi
step "all tests passed"
