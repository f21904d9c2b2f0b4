"""A CONNECT tunnel over HTTP/2 (RFC 9113 section 8.5) through flowgate, with Python's h2.

Usage: h2_connect.py --proxy HOST:PORT --target HOST:PORT --send TEXT [--expect-banner TEXT]

Speaks HTTP/2 with prior knowledge to the proxy, opens one CONNECT stream to the target,
optionally waits for the target's banner (a server that speaks first), then sends TEXT as
DATA, ends the stream, and collects what comes back until the stream ends. Prints one
JSON object (last line): the CONNECT status and everything received, as text.
"""

import argparse
import json
import socket
import sys

import h2.config
import h2.connection
import h2.events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--proxy", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--send", required=True)
    parser.add_argument("--expect-banner", default="")
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()
    host, port = args.proxy.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=args.timeout)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(":method", "CONNECT"), (":authority", args.target)])
    sock.sendall(conn.data_to_send())
    result = {"status": None, "received": "", "ended": False}
    sent = False
    received = b""
    while not result["ended"]:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                result["status"] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                received += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)) and event.stream_id == stream:
                result["ended"] = True
        banner_seen = received.startswith(args.expect_banner.encode())
        if result["status"] == 200 and not sent and banner_seen:
            conn.send_data(stream, args.send.encode(), end_stream=True)
            sent = True
        sock.sendall(conn.data_to_send())
    result["received"] = received.decode("utf-8", "replace")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
