#!/usr/bin/env bash
# Autobahn's whole WebSocket suite (every case but the 9.x performance group: 463) through
# flowgate both ways, as tests/e2e/autobahn.rs runs a subset of it in CI (with
# AUTOBAHN_DIRECT=1 also without flowgate, for comparison); prints each run's counts of
# verdicts and the cases that do not pass. Needs the test virtualenv (tests/run.sh makes it) and a release build
# (cargo build --release -p flowgate; FLOWGATE=path picks another build). About 15 minutes
# on 2 cores (30 with AUTOBAHN_DIRECT=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=target/e2e-venv/bin/python
KOSOKU=target/e2e-venv/bin/kosoku
FLOWGATE=${FLOWGATE:-target/release/flowgate}
out=target/autobahn
rm -rf "$out"
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
summary() {
    $PY - "$1" <<'PYEOF'
import collections, json, pathlib, sys
index = json.loads((pathlib.Path(sys.argv[1]) / "index.json").read_text())
for agent, cases in index.items():
    verdicts = collections.Counter(f"{c['behavior']} / {c['behaviorClose']}" for c in cases.values())
    print(f"{sys.argv[1]}: {len(cases)} cases: {dict(sorted(verdicts.items()))}")
    for case, c in sorted(cases.items()):
        if c["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL") or c["behaviorClose"] not in ("OK", "INFORMATIONAL"):
            print(f"  {case}: {c['behavior']} / {c['behaviorClose']} (close code {c['remoteCloseCode']})")
PYEOF
}
start_fg() { # ARGS...: starts flowgate on a free port, sets FG_PORT
    FG_PORT=$(port)
    $FLOWGATE --listen-host 127.0.0.1 -p "$FG_PORT" -q --confdir "$out/confdir" "$@" >"$out/flowgate-$FG_PORT.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$FG_PORT") 2>/dev/null && return; sleep 0.1; done
    echo "flowgate did not start" >&2; exit 1
}

# 1. kosoku's fuzzing client -> (flowgate, reverse mode) -> wsproto echo server.
$PY tests/e2e/py/ws.py echo >"$out/echo.port" &
pids+=($!)
until [ -s "$out/echo.port" ]; do sleep 0.1; done
ECHO=$(cat "$out/echo.port")
if [ -n "${AUTOBAHN_DIRECT:-}" ]; then
    $KOSOKU "ws://127.0.0.1:$ECHO" -x '9.*' -p 2 -o "$out/client-direct" >/dev/null 2>&1 || true
fi
start_fg --mode "reverse:http://127.0.0.1:$ECHO"
$KOSOKU "ws://127.0.0.1:$FG_PORT" -x '9.*' -p 2 -o "$out/client-through-flowgate" >/dev/null 2>&1 || true

# 2. websockets client under test -> (flowgate, explicit proxy) -> kosoku's fuzzing server.
vias=flowgate
[ -n "${AUTOBAHN_DIRECT:-}" ] && vias="direct flowgate"
for via in $vias; do
    KS=$(port)
    $KOSOKU -m fuzzingserver "127.0.0.1:$KS" -x '9.*' -o "$out/server-$via" >/dev/null 2>&1 &
    ks=$!
    pids+=($ks)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$KS") 2>/dev/null && break; sleep 0.1; done
    if [ "$via" = flowgate ]; then
        start_fg
        $PY tests/e2e/py/ws.py autobahn-client "ws://127.0.0.1:$KS" --proxy "http://127.0.0.1:$FG_PORT" >/dev/null
    else
        $PY tests/e2e/py/ws.py autobahn-client "ws://127.0.0.1:$KS" >/dev/null
    fi
    wait "$ks" || true
done

for run in client-direct client-through-flowgate server-direct server-flowgate; do
    [ -d "$out/$run" ] && summary "$out/$run"
done
