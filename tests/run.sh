#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what the tests drive flowgate with (curl,
# openssl, nghttp/h2load, slowhttptest, valgrind, headless Chromium from Debian; Python's h2 and grpcio, pinned in
# tests/e2e/requirements.txt, in a virtualenv), the plugin toolchains (plugins/toolchains.sh)
# and the wasm32-wasip2 target, then runs the whole cargo test suite (which builds the
# example plugins once). Without arguments it then runs the HTTP/1 codec's fuzz targets
# briefly (host/h1/fuzz/smoke.sh); with arguments they go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The build, the tools and the tests' files take ~7 GiB; a full disk would otherwise show
# up as some build script's failure halfway through.
free_gib=$(( $(df -Pk . | awk 'NR == 2 { print $4 }') / 1048576 ))
if [ "$free_gib" -lt 7 ]; then
    echo "tests/run.sh: only ${free_gib} GiB free on $(df -P . | awk 'NR == 2 { print $6 }'); the build and tests need ~7 GiB" >&2
    exit 1
fi

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v slowhttptest >/dev/null 2>&1 || missing+=(slowhttptest)
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}" >&2
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Python test clients' packages, in a virtualenv the e2e tests find (FLOWGATE_TEST_PYTHON).
venv=target/e2e-venv
if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/e2e/requirements.txt "$venv/requirements.txt"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/e2e/requirements.txt
    cp tests/e2e/requirements.txt "$venv/requirements.txt"
fi
export FLOWGATE_TEST_PYTHON="$PWD/$venv/bin/python"

# The plugin toolchains (clang + wasi-libc, componentize-py, componentize-js), pinned: the
# JavaScript, Python and C plugins are built from source by the tests.
source plugins/toolchains.sh

# The benchmark's tools (nginx, oha, mitmdump): a test runs the harness's quick mode.
source tests/bench/tools.sh
export FLOWGATE_BENCH_OHA="$OHA" FLOWGATE_BENCH_MITMDUMP="$MITMDUMP"

# har-validator (npm, pinned): the flow store's HAR output is checked with it.
if [ ! -f target/har-validator/node_modules/har-validator/package.json ]; then
    npm install --silent --no-audit --no-fund --prefix target/har-validator har-validator@5.1.5 >/dev/null
fi

rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
rustup target add wasm32-wasip2 >/dev/null

# Run the suite, then print one closing line with the totals of every test binary (cargo's
# own last line is that of a doctest target, which may have no tests).
log="$(mktemp)"
set +e
cargo test --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
# The whole run (no arguments, as CI calls it) also fuzzes the HTTP/1 codec briefly.
if [ "$#" -eq 0 ]; then
    bash host/h1/fuzz/smoke.sh || status=1
fi
exit "$status"
