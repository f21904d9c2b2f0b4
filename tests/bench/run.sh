#!/usr/bin/env bash
# The benchmark harness: flowgate against direct, mitmdump, hudsucker (a Rust MITM proxy
# library, no-op) and flowgate with a Rust plugin on every HTTP hook, a concurrency sweep, and a
# hostile plugin spinning on 10 flows (spin), in one run (see tests/bench/bench.py for targets and scenarios).
#   bash tests/bench/run.sh --quick     # under 3 minutes
#   bash tests/bench/run.sh             # full: 5 rounds of 5 s, 1 GiB body, 10,000 idle TLS
# Installs its tools on a fresh machine (valgrind too, for the instructions scenario), builds
# flowgate (release), the request-id plugin and hudsucker-noop (tests/bench/hudsucker), prints a
# table and writes target/bench/report.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/bench/tools.sh
bench_hudsucker
if ! command -v valgrind >/dev/null 2>&1; then
    echo "bench tools: installing valgrind" >&2
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind >/dev/null
fi
rustup target add wasm32-wasip2 >/dev/null
cargo build --release -p flowgate
cargo build --release --manifest-path plugins/Cargo.toml --target wasm32-wasip2 -p request-id -p spin-forever
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 tests/bench/bench.py \
    --flowgate target/release/flowgate \
    --plugin plugins/target/wasm32-wasip2/release/request_id.wasm \
    --spin-plugin plugins/target/wasm32-wasip2/release/spin_forever.wasm \
    --oha "$OHA" --mitmdump "$MITMDUMP" --hudsucker "$HUDSUCKER" --valgrind "$(command -v valgrind)" "$@"
