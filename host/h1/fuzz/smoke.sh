#!/usr/bin/env bash
# Runs each cargo-fuzz target of the HTTP/1 codec briefly, from the seeds here: a smoke
# test (a crash or a failed assertion fails it). For a real campaign:
#   cd host/h1 && cargo +nightly fuzz run request
# cargo-fuzz is installed from crates.io into target/fuzz-tools; the nightly toolchain is
# the one the machines have beside the pinned stable.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FLOWGATE_FUZZ_SECONDS:-15}"
tools="$PWD/../../target/fuzz-tools"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
    echo "fuzz: installing cargo-fuzz into $tools" >&2
    cargo install -q --locked cargo-fuzz@0.13.2 --root "$tools"
fi
export PATH="$tools/bin:$PATH"
for target in request response; do
    mkdir -p "fuzz/corpus/$target"
    log="$(mktemp)"
    if ! cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        tail -40 "$log" >&2
        rm -f "$log"
        echo "fuzz: $target FAILED (the crashing input is in host/h1/fuzz/artifacts/$target)" >&2
        exit 1
    fi
    echo "fuzz: $target ok: $(grep -o 'Done [0-9]* runs in [0-9]* second(s)' "$log" | tail -1)"
    rm -f "$log"
done
