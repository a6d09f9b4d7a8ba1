#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (cargo-fuzz, nightly).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# Installs cargo-fuzz and the nightly toolchain when missing. A crash stops
# the run with the failing input under fuzz/artifacts/TARGET/; fix it and
# keep the input as a unit test next to the code it broke.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

for target in $(cargo +nightly fuzz list); do
    echo "== $target: ${seconds} s"
    mkdir -p "corpus/$target"
    # Known crashers and typical inputs start the corpus (fuzz/seeds/).
    if [ -d "seeds/$target" ]; then cp -n "seeds/$target"/* "corpus/$target"/; fi
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=2048 2>&1 \
        | grep -E "^(#[0-9]+ +DONE|Done|==[0-9]+==|SUMMARY|artifact_prefix|Test unit)" || true
    if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
        echo "CRASH in $target: $(ls "artifacts/$target"/crash-*)"
        exit 1
    fi
done
echo "no crash in $(cargo +nightly fuzz list | wc -l) targets, ${seconds} s each"
