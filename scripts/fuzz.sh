#!/usr/bin/env bash
# Fuzzes the transaction → plan path with cargo-fuzz (libFuzzer) on a pinned nightly, for
# FUZZ_SECONDS (default 600). Not part of CI: run it before changing the planner, and record the
# figure in docs/performance.md ("Fuzzing"). Installs the nightly and cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
toolchain=${FUZZ_TOOLCHAIN:-nightly-2026-05-19}
seconds=${FUZZ_SECONDS:-600}
rustup toolchain list | grep -q "^$toolchain" || rustup toolchain install "$toolchain" --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo "+$toolchain" install cargo-fuzz --locked
mkdir -p corpus/transaction_plan
cp -n seeds/*.json corpus/transaction_plan/ 2>/dev/null || true
# -jobs=1: the machine has two cores; the fuzzer gets one.
cargo "+$toolchain" fuzz run transaction_plan corpus/transaction_plan -- \
  -max_total_time="$seconds" -max_len=65536 -timeout=10 -print_final_stats=1 2>&1 | tee target-fuzz.log
echo "fuzzing ran $seconds s without a finding"
