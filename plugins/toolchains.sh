#!/usr/bin/env bash
# Installs the pinned toolchains the non-Rust plugins build with, then puts them on PATH
# (source this file; tests/run.sh does):
#   C           Debian's clang, lld, wasi-libc and wasm32 compiler-rt (the release's versions);
#               wit-bindgen's C generator and wit-component are linked into flowgate itself
#   Python      componentize-py, pinned in plugins/requirements.txt, in target/plugin-tools/venv
#   JavaScript  @bytecodealliance/componentize-js, pinned in plugins/package.json (and its lock), in
#               plugins/node_modules (Node finds it from every plugin directory below)
# Exports FLOWGATE_COMPONENTIZE_PY for `flowgate plugin build`. Leaves the caller's shell
# options as they were.
# Saved from $- and [[ -o ]], not from $(set +o): a command substitution runs with errexit
# off, so restoring what it printed would turn the caller's `set -e` off.
_fg_opts="set +euo pipefail"
[[ $- == *e* ]] && _fg_opts+="; set -e"
[[ $- == *u* ]] && _fg_opts+="; set -u"
[[ -o pipefail ]] && _fg_opts+="; set -o pipefail"
set -euo pipefail
_fg_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_fg_missing=()
for _fg_pkg in clang lld wasi-libc libclang-rt-dev-wasm32; do
    dpkg -s "$_fg_pkg" >/dev/null 2>&1 || _fg_missing+=("$_fg_pkg")
done
if [ ${#_fg_missing[@]} -gt 0 ]; then
    echo "plugins/toolchains.sh: installing ${_fg_missing[*]}" >&2
    _fg_sudo=""
    [ "$(id -u)" -ne 0 ] && _fg_sudo="sudo"
    $_fg_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $_fg_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${_fg_missing[@]}" >/dev/null
fi

_fg_venv="$_fg_root/target/plugin-tools/venv"
if [ ! -x "$_fg_venv/bin/componentize-py" ] || ! cmp -s "$_fg_root/plugins/requirements.txt" "$_fg_venv/requirements.txt"; then
    echo "plugins/toolchains.sh: installing componentize-py" >&2
    python3 -m venv "$_fg_venv"
    "$_fg_venv/bin/pip" install -q --disable-pip-version-check -r "$_fg_root/plugins/requirements.txt" ||
        { echo "plugins/toolchains.sh: pip install failed" >&2; eval "$_fg_opts"; return 1 2>/dev/null || exit 1; }
    cp "$_fg_root/plugins/requirements.txt" "$_fg_venv/requirements.txt"
fi
export FLOWGATE_COMPONENTIZE_PY="$_fg_venv/bin/componentize-py"

if ! cmp -s "$_fg_root/plugins/package-lock.json" "$_fg_root/plugins/node_modules/.package-lock.json.installed" 2>/dev/null; then
    echo "plugins/toolchains.sh: installing componentize-js" >&2
    (cd "$_fg_root/plugins" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
        { echo "plugins/toolchains.sh: npm ci failed" >&2; eval "$_fg_opts"; return 1 2>/dev/null || exit 1; }
    cp "$_fg_root/plugins/package-lock.json" "$_fg_root/plugins/node_modules/.package-lock.json.installed"
fi
eval "$_fg_opts"
unset _fg_root _fg_missing _fg_pkg _fg_sudo _fg_venv _fg_opts
