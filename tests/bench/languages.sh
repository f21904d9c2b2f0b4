#!/usr/bin/env bash
# The same plugin in Rust, C, JavaScript and Python (the `flowgate plugin new` starter):
# component size, compile time, instantiation and hook-call time per language.
#   bash tests/bench/languages.sh            # about 2 minutes, most of it compiling
# Installs the toolchains (plugins/toolchains.sh), builds flowgate (release), creates and
# builds the four projects in target/bench/lang, then runs tests/benches/languages.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."
source plugins/toolchains.sh
rustup target add wasm32-wasip2 >/dev/null
cargo build --release -p flowgate
dir="$PWD/target/bench/lang"
for lang in rust c js python; do
    if [ ! -f "$dir/$lang/plugin.toml" ]; then
        mkdir -p "$dir"
        # Created once and kept: the JavaScript project runs `npm install` on its first build.
        target/release/flowgate plugin new --lang "$lang" --dir "$dir/$lang" "starter-$lang" >/dev/null
    fi
    target/release/flowgate plugin build "$dir/$lang" | sed "s/^/$lang: /"
done
FLOWGATE_BENCH_LANG_DIR="$dir" cargo bench -p flowgate-tests --bench languages -- "$@"
