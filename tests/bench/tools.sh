# Installs what the benchmark drives on a fresh machine, pinned, and exports where they are:
#   OHA       the load generator (oha, from crates.io, into target/bench-tools)
#   MITMDUMP  mitmproxy's mitmdump (from PyPI, pinned in tests/bench/requirements.txt, in
#             the virtualenv target/bench-venv)
#   HUDSUCKER hudsucker-noop (tests/bench/hudsucker: hudsucker 0.25's no-op MITM proxy, from
#             crates.io, pinned by its Cargo.lock), built by `bench_hudsucker` into
#             target/bench-tools/hudsucker: tests/bench/run.sh calls it; tests/run.sh does not
#             (its test of the harness runs without hudsucker, and aws-lc takes minutes to build)
# nginx (the origin), curl and openssl come from Debian. Sourced by tests/bench/run.sh and
# tests/run.sh (a test runs the harness's quick mode).
OHA_VERSION=1.16.0

bench_missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || bench_missing+=(nginx-light)
command -v curl >/dev/null 2>&1 || bench_missing+=(curl)
command -v openssl >/dev/null 2>&1 || bench_missing+=(openssl)
command -v cmake >/dev/null 2>&1 || bench_missing+=(cmake)
if [ ${#bench_missing[@]} -gt 0 ]; then
    echo "bench tools: installing ${bench_missing[*]}" >&2
    bench_sudo=""
    [ "$(id -u)" -ne 0 ] && bench_sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $bench_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $bench_sudo apt-get install -y -qq "${bench_missing[@]}" >/dev/null
fi

OHA="$PWD/target/bench-tools/bin/oha"
if [ ! -x "$OHA" ] || [ "$("$OHA" --version 2>/dev/null)" != "oha $OHA_VERSION" ]; then
    echo "bench tools: building oha $OHA_VERSION (once)" >&2
    cargo install oha --locked --version "$OHA_VERSION" --root target/bench-tools --quiet
fi

bench_venv=target/bench-venv
if [ ! -x "$bench_venv/bin/mitmdump" ] || ! cmp -s tests/bench/requirements.txt "$bench_venv/requirements.txt"; then
    echo "bench tools: installing mitmproxy into $bench_venv" >&2
    python3 -m venv "$bench_venv"
    "$bench_venv/bin/pip" install -q --disable-pip-version-check -r tests/bench/requirements.txt
    cp tests/bench/requirements.txt "$bench_venv/requirements.txt"
fi
MITMDUMP="$PWD/$bench_venv/bin/mitmdump"
export OHA MITMDUMP

# Builds hudsucker-noop when it is missing or its sources changed (a stamp of their hashes;
# its own workspace and Cargo.lock, so nothing of it enters flowgate's), exports HUDSUCKER.
bench_hudsucker() {
    local dir=tests/bench/hudsucker target=target/bench-tools/hudsucker stamp
    HUDSUCKER="$PWD/$target/release/hudsucker-noop"
    stamp="$(cat "$dir/Cargo.toml" "$dir/Cargo.lock" "$dir"/src/*.rs | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$HUDSUCKER" ] || [ "$(cat "$target/stamp" 2>/dev/null)" != "$stamp" ]; then
        echo "bench tools: building hudsucker-noop (once)" >&2
        cargo build --release --locked --quiet --manifest-path "$dir/Cargo.toml" --target-dir "$target"
        echo "$stamp" >"$target/stamp"
    fi
    export HUDSUCKER
}
