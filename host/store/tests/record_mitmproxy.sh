#!/usr/bin/env bash
# Records the mitmproxy fixtures in tests/data with a real mitmdump (mitmproxy 11.0.2 from
# target/bench-venv, installed by tests/bench/tools.sh) driven by curl and Python:
#   mitmproxy-11.flows  mitmdump -w: HTTP/1.1 GET (query, cookies), HTTP/1.1 POST over
#                       intercepted TLS, HTTP/2 POST with a binary body both ways, an error
#                       flow (the upstream refuses the connection), a DNS query
#   mitmproxy-11.har    the same session's --set hardump=
#   mitmproxy-11.json   what mitmproxy's own FlowReader says is in the flows file
#                       (tests/mitmproxy_dump.py)
# The origin is a second mitmdump in reverse mode that answers every request itself
# (TLS and HTTP/2 are its own). Ports are picked at random on 127.0.0.1; only processes
# this script started are stopped, by PID.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="${FLOWGATE_BENCH_VENV:-$root/target/bench-venv}"
mitmdump="$venv/bin/mitmdump"
python="$venv/bin/python"
out="$here/data"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
    for _ in $(seq 1 200); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then return 0; fi
        python3 -c 'import time; time.sleep(0.05)'
    done
    echo "nothing listens on port $1" >&2
    return 1
}

origin_port="$(free_port)"
proxy_port="$(free_port)"
dns_port="$(free_port)"
refused_port="$(free_port)"

cat >"$work/origin.py" <<'EOF'
from mitmproxy import http

def request(flow: http.HTTPFlow) -> None:
    if flow.request.path.startswith("/binary"):
        body = bytes(range(256))
        kind = "application/octet-stream"
    else:
        body = b"echo " + flow.request.method.encode() + b" " + (flow.request.content or b"")
        kind = "text/plain; charset=utf-8"
    flow.response = http.Response.make(
        201 if flow.request.method == "POST" else 200,
        body,
        [(b"Content-Type", kind.encode()), (b"Set-Cookie", b"sid=abc; Path=/; HttpOnly"),
         (b"Set-Cookie", b"theme=dark; Secure; SameSite=Lax"), (b"X-Origin", b"fixture")],
    )
EOF

cat >"$work/dns.py" <<'EOF'
import ipaddress
from mitmproxy import dns

def dns_request(flow: dns.DNSFlow) -> None:
    q = flow.request.questions[0]
    flow.response = flow.request.succeed([dns.ResourceRecord.A(q.name, ipaddress.IPv4Address("192.0.2.7"), ttl=300)])
EOF

cat >"$work/annotate.py" <<'EOF'
from mitmproxy import http

def response(flow: http.HTTPFlow) -> None:
    if flow.request.path.startswith("/plain"):
        flow.marked = ":star:"
        flow.comment = "a comment"
        flow.metadata["note"] = "kept"
        flow.metadata["count"] = 3
EOF

"$mitmdump" -q --set confdir="$work/origin-conf" --listen-host 127.0.0.1 \
    --mode "reverse:http://127.0.0.1:$refused_port@$origin_port" --set connection_strategy=lazy \
    -s "$work/origin.py" &
pids+=($!)
"$mitmdump" -q --set confdir="$work/conf" --listen-host 127.0.0.1 \
    --mode "regular@$proxy_port" --mode "dns@$dns_port" --set ssl_insecure=true \
    -s "$work/dns.py" -s "$work/annotate.py" \
    -w "$work/flows" --set hardump="$work/flows.har" &
proxy_pid=$!
pids+=($proxy_pid)
wait_port "$origin_port"
wait_port "$proxy_port"

ca="$work/conf/mitmproxy-ca-cert.pem"
curl_() { curl -sS -o /dev/null --proxy "http://127.0.0.1:$proxy_port" --cacert "$ca" "$@"; }
curl_ --http1.1 -H 'X-Test: one' -H 'Cookie: a=1; b=two' "http://127.0.0.1:$origin_port/plain?x=1&y=two%20words"
curl_ --http1.1 --data-binary 'hello=world&n=1' -H 'Content-Type: application/x-www-form-urlencoded' \
    "https://localhost:$origin_port/form"
head -c 300 /dev/zero | tr '\0' '\377' >"$work/body.bin"
curl_ --http2 --data-binary @"$work/body.bin" -H 'Content-Type: application/octet-stream' \
    "https://localhost:$origin_port/binary"
curl_ --http1.1 "http://127.0.0.1:$refused_port/refused" || true
"$python" - "$dns_port" <<'EOF'
import socket, struct, sys
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(query, ("127.0.0.1", int(sys.argv[1])))
s.recvfrom(512)
EOF

# mitmdump writes the HAR when it shuts down.
kill -INT "$proxy_pid"
wait "$proxy_pid" || true
cp "$work/flows" "$out/mitmproxy-11.flows"
cp "$work/flows.har" "$out/mitmproxy-11.har"
"$python" "$here/mitmproxy_dump.py" "$out/mitmproxy-11.flows" >"$out/mitmproxy-11.json"
ls -l "$out"
