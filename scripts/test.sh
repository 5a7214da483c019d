#!/usr/bin/env bash
# Runs every test of uvs on a fresh Debian machine of this kind (as root): installs what the
# tests need, checks formatting and lints, runs the unit tests, the network-namespace
# integration tests (netns-tests/, which fail rather than skip under CI=true), a short
# fuzz run of every cargo-fuzz target, the Debian package's checks (scripts/test-package.sh:
# contents, install/remove in scratch roots, unit verification, man pages, completions), the
# in-memory datapath benchmark, and the benchmark harness's quick smoke run (bench/run
# --quick: both topologies, traffic flows, report made).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --lib --bins --test uvsadm_golden --test layers
./scripts/fuzz.sh --smoke
CI="${CI:-}" cargo test --test netns -- --test-threads=2
cargo bench --bench datapath
# Benchmark harness smoke run: both topologies, traffic flows, the report is produced.
cargo build --release --bin uvs
./scripts/test-package.sh
bench/run --quick
echo "all tests passed"
