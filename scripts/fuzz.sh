#!/usr/bin/env bash
# Runs every cargo-fuzz target for a set time on the stable toolchain (no sanitizer).
#
#   scripts/fuzz.sh [SECONDS]     each target for SECONDS (default 60)
#   scripts/fuzz.sh --smoke       each target for 7 s (about 50 s in all once built)
#   scripts/fuzz.sh --asan [S]    with AddressSanitizer (RUSTC_BOOTSTRAP=1 on stable)
#   TARGETS="frame arp" scripts/fuzz.sh 30   only those targets
#
# Seeds are regenerated into fuzz/seeds/TARGET (real frames built with etherparse, the
# repository's configs, rules and admin requests); what the fuzzer finds accumulates in
# fuzz/corpus/TARGET, crashes in fuzz/artifacts/TARGET. Exit status: non-zero if any target
# found a crash (reproduce with `cargo fuzz run -s none TARGET fuzz/artifacts/TARGET/crash-…`).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"
secs=60
sanitizer=none
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) secs=7 ;;
        --asan) sanitizer=address; export RUSTC_BOOTSTRAP=1 ;;
        [0-9]*) secs="$1" ;;
        *) echo "usage: $0 [--smoke] [--asan] [SECONDS]" >&2; exit 2 ;;
    esac
    shift
done
targets=${TARGETS:-"frame arp toml_config rules admin_request tunnel_endpoint keepalived_conf ldirectord_conf"}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}}"
# Seeds, built without fuzzing instrumentation.
cargo run --quiet --example seeds
cargo fuzz build -s "$sanitizer" >/dev/null

failed=()
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t: ${secs}s"
    # -rss_limit_mb: a parser that allocates without bound is a finding too.
    if ! cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -timeout=5 -print_final_stats=1 \
        2> "artifacts/$t/last-run.log"; then
        failed+=("$t")
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "artifacts/$t/last-run.log" >&2 || true
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "artifacts/$t/last-run.log" | tr '\n' ' '
    echo
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: all targets ran ${secs}s without a finding"
