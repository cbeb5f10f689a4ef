#!/usr/bin/env bash
# Fuzzing, bounded: installs cargo-fuzz when missing, builds every target in
# fuzz/ and runs each for MSGD_FUZZ_SECONDS (default 20) from its committed
# seed corpus, with libFuzzer seed MSGD_FUZZ_SEED (default 1). Exits non-zero
# when a target crashes; the input that did it is left in
# fuzz/artifacts/TARGET/ (replay: cargo fuzz run -s none TARGET FILE).
# CI runs it from scripts/test.sh after `cargo test`.
#
# `-s none`: the parsers the targets call hold no unsafe code, so
# AddressSanitizer would find nothing a panic does not; without it the targets
# build on the stable toolchain (a CI machine has only that one) and run
# faster.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
CARGO_FUZZ_VERSION=0.13.2
SECONDS_PER_TARGET="${MSGD_FUZZ_SECONDS:-20}"
# A fixed seed makes a run repeatable: what CI finds, a developer replays by
# running this script. Set MSGD_FUZZ_SEED=0 for a random one (exploring).
SEED="${MSGD_FUZZ_SEED:-1}"

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
cargo fuzz build -s none
# New inputs go to a scratch corpus; the committed seeds are only read.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $(cargo fuzz list); do
    echo "fuzz: $target for ${SECONDS_PER_TARGET}s"
    mkdir -p "$scratch/$target"
    if ! cargo fuzz run -s none "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -seed="$SEED" -timeout=10 -print_final_stats=1; then
        failed+=("$target")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: every target ran ${SECONDS_PER_TARGET}s without a crash"
