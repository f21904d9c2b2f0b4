"""HTTP/2 multiplexing client for the flowgate e2e tests: concurrent GET streams on one connection, optionally one flow-control-stalled stream.

Usage: h2_streams.py --host H --port P [--tls --cafile F --server-name N] [--authority A] [--proxy PH:PP]
                     --request PATH [--request PATH ...] [--window-stall PATH] [--hold 3]
Cleartext uses h2c prior knowledge ("negotiated": "h2c"); --tls uses TLS with ALPN h2 ("negotiated" is
the ALPN result, and nothing is sent unless it is "h2"). The stalled stream never gets stream-level
window beyond the initial 65535 bytes, while the connection window is always replenished.
--proxy first opens an HTTP/1.1 CONNECT tunnel to H:P through the proxy PH:PP (a 2xx answer is required,
its status is "proxy_status") and then runs everything above inside that tunnel.
Prints one JSON object on stdout (last line); exits 0 whenever the run happened.
"""

import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
from hpack.struct import NeverIndexedHeaderTuple


def log(*args):
    print(*args, file=sys.stderr, flush=True)


MAX_PROXY_HEAD = 16 * 1024


def host_port(value):
    """argparse type for HOST:PORT ([v6]:PORT also accepted)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def proxy_connect(args, result):
    """TCP to the proxy, CONNECT host:port, read the response head; returns the tunnelled socket."""
    sock = socket.create_connection(args.proxy, timeout=5)
    try:
        target = f"{args.host}:{args.port}"
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode("ascii"))
        # Read byte by byte so that nothing sent after the head (tunnel data) is consumed here.
        head = bytearray()
        deadline = time.monotonic() + args.timeout
        while not head.endswith(b"\r\n\r\n"):
            if len(head) >= MAX_PROXY_HEAD:
                raise RuntimeError(f"proxy response head exceeds {MAX_PROXY_HEAD} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete proxy response head within --timeout {args.timeout}s")
            sock.settimeout(remaining)
            try:
                byte = sock.recv(1)
            except socket.timeout:
                raise TimeoutError(f"no complete proxy response head within --timeout {args.timeout}s") from None
            if not byte:
                raise RuntimeError(f"proxy closed the connection during the response head ({len(head)} bytes)")
            head += byte
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise RuntimeError(f"malformed proxy status line: {status_line!r}")
        result["proxy_status"] = int(parts[1])
        if not 200 <= result["proxy_status"] < 300:
            raise RuntimeError(f"proxy refused CONNECT {target}: {status_line!r}")
        log(f"proxy tunnel to {target}: {status_line}")
        sock.settimeout(5)
        return sock
    except BaseException:
        sock.close()
        raise


def connect(args, result):
    if args.proxy:
        sock = proxy_connect(args, result)
    else:
        sock = socket.create_connection((args.host, args.port), timeout=5)
    if not args.tls:
        return sock, "h2c"
    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["h2"])
    tls = ctx.wrap_socket(sock, server_hostname=args.server_name or args.host)
    return tls, tls.selected_alpn_protocol()


def run(args, result):
    sock, negotiated = connect(args, result)
    result["negotiated"] = negotiated
    if negotiated not in ("h2", "h2c"):
        sock.close()
        raise RuntimeError(f"ALPN did not select h2: {negotiated!r}")

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
    scheme = "https" if args.tls else "http"
    authority = args.authority or f"{args.host}:{args.port}"

    streams = {}  # stream id -> (key in result["streams"], entry)
    paths = list(args.request) + ([args.window_stall] if args.window_stall else [])
    stalled_id = None
    start = time.monotonic()
    ms = lambda: round((time.monotonic() - start) * 1000, 1)
    for n, path in enumerate(paths):
        stream_id = conn.get_next_available_stream_id()
        key = path if path not in result["streams"] else f"{path}#{n}"
        entry = {"status": None, "bytes": 0, "headers_ms": None, "end_ms": None, "trailers": {}, "reset": None,
                 "headers": {}, "never_indexed": []}
        result["streams"][key] = entry
        streams[stream_id] = entry
        if args.window_stall and n == len(paths) - 1:
            stalled_id = stream_id
        conn.send_headers(stream_id, [(":method", "GET"), (":scheme", scheme), (":authority", authority),
                                      (":path", path)], end_stream=True)
    sock.sendall(conn.data_to_send())

    def done(stream_id):
        return streams[stream_id]["end_ms"] is not None or streams[stream_id]["reset"] is not None

    others = [sid for sid in streams if sid != stalled_id]
    deadline = time.monotonic() + args.timeout
    hold_until = None
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        if hold_until is None and all(done(sid) for sid in others):
            if stalled_id is None or done(stalled_id):
                break
            hold_until = time.monotonic() + args.hold
        if hold_until is not None and time.monotonic() >= hold_until:
            break
        try:
            data = sock.recv(1 << 16)
        except (socket.timeout, ssl.SSLWantReadError):
            continue
        if not data:
            result["closed_by_peer"] = True
            break
        for event in conn.receive_data(data):
            entry = streams.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
                entry["status"] = int(headers[":status"])
                entry["headers"] = headers
                # The fields the server sent as never-indexed literals (RFC 7541 6.2.3).
                entry["never_indexed"] = sorted(h[0] for h in event.headers if isinstance(h, NeverIndexedHeaderTuple))
                entry["headers_ms"] = ms()
            elif isinstance(event, h2.events.DataReceived):
                entry["bytes"] += len(event.data)
                size = event.flow_controlled_length
                if size and event.stream_id == stalled_id:
                    conn.increment_flow_control_window(size)  # connection window only
                elif size:
                    conn.acknowledge_received_data(size, event.stream_id)  # connection + stream
            elif isinstance(event, h2.events.TrailersReceived):
                entry["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                entry["end_ms"] = ms()
            elif isinstance(event, h2.events.StreamReset):
                entry["reset"] = int(event.error_code)
                entry["end_ms"] = ms()
            elif isinstance(event, h2.events.ConnectionTerminated):
                result["goaway"] = True
                result["goaway_error"] = int(event.error_code)
                result["last_stream_id"] = event.last_stream_id
        sock.sendall(conn.data_to_send())
        if result["goaway"] and all(done(sid) or sid > result["last_stream_id"] for sid in streams):
            break
    else:
        log(f"gave up after --timeout {args.timeout}s")

    if stalled_id is not None:
        result["stalled_bytes"] = streams[stalled_id]["bytes"]
        result["stalled"] = {"status": streams[stalled_id]["status"], "bytes": streams[stalled_id]["bytes"]}
    try:
        conn.close_connection()
        sock.sendall(conn.data_to_send())
    except Exception:
        pass
    sock.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--authority", help="default HOST:PORT")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--cafile", help="CA bundle to verify the server with (--tls)")
    p.add_argument("--server-name", help="SNI and verified name (--tls), default HOST")
    p.add_argument("--proxy", type=host_port, metavar="HOST:PORT",
                   help="reach HOST:PORT through an HTTP CONNECT tunnel via this proxy")
    p.add_argument("--request", action="append", required=True, metavar="PATH")
    p.add_argument("--window-stall", metavar="PATH")
    p.add_argument("--hold", type=float, default=3, help="seconds to keep the stalled stream open after the rest")
    p.add_argument("--timeout", type=float, default=20, help="limit for the whole exchange")
    args = p.parse_args()

    result = {"negotiated": None, "streams": {}, "stalled_bytes": None, "stalled": None, "goaway": False,
              "goaway_error": None, "last_stream_id": None, "closed_by_peer": False, "error": None,
              "proxy_status": None}
    try:
        run(args, result)
    except Exception as e:  # protocol violations by the peer are findings, reported as such
        result["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
