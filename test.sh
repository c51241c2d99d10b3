#!/usr/bin/env bash
# Runs every Keel test: formatting, lints, unit, property and whole-system tests.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
