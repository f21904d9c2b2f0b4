"""Prints, as JSON, the fields of every flow in a mitmproxy flow file (or HAR file), as
mitmproxy's own FlowReader loads them: the expected values the Rust tests compare
flowgate's reader with. Bytes are hex, times are float seconds as Python's repr strings, addresses are
[host, port] lists. Run with mitmproxy's Python: target/bench-venv/bin/python."""

import json
import sys

from mitmproxy import dns, http, io, tcp, udp


def addr(a):
    return None if a is None else [a[0], a[1]]


def conn(c, server):
    out = {
        "id": c.id,
        "peername": addr(c.peername),
        "sockname": addr(c.sockname),
        "tls": c.tls,
        "sni": c.sni,
        "alpn": c.alpn.decode("latin-1") if c.alpn is not None else None,
        "tls_version": c.tls_version,
        "cipher": c.cipher,
        "certificates": [cert.to_pem().hex() for cert in c.certificate_list],
        "timestamp_start": c.timestamp_start,
        "timestamp_tls_setup": c.timestamp_tls_setup,
        "timestamp_end": c.timestamp_end,
    }
    if server:
        out["address"] = addr(c.address)
        out["timestamp_tcp_setup"] = c.timestamp_tcp_setup
    return out


def headers(h):
    if h is None:
        return []
    return [[k.decode("latin-1"), v.hex()] for k, v in h.fields]


def message(m):
    return {
        "http_version": m.data.http_version.decode("latin-1"),
        "headers": headers(m.headers),
        "content": m.raw_content.hex() if m.raw_content is not None else None,
        "trailers": headers(m.trailers),
        "timestamp_start": m.timestamp_start,
        "timestamp_end": m.timestamp_end,
    }


def dns_message(m):
    record = lambda r: {"name": r.name, "type": r.type, "class": r.class_, "ttl": r.ttl, "data": r.data.hex()}
    return {
        "timestamp": m.timestamp,
        "id": m.id,
        "query": m.query,
        "op_code": m.op_code,
        "authoritative_answer": m.authoritative_answer,
        "truncation": m.truncation,
        "recursion_desired": m.recursion_desired,
        "recursion_available": m.recursion_available,
        "reserved": m.reserved,
        "response_code": m.response_code,
        "questions": [{"name": q.name, "type": q.type, "class": q.class_} for q in m.questions],
        "answers": [record(r) for r in m.answers],
        "authorities": [record(r) for r in m.authorities],
        "additionals": [record(r) for r in m.additionals],
    }


def flow(f):
    out = {
        "type": f.type,
        "id": f.id,
        "timestamp_created": f.timestamp_created,
        "marked": f.marked,
        "comment": f.comment,
        "is_replay": f.is_replay,
        "metadata": {k: v for k, v in f.metadata.items() if isinstance(v, str)},
        "error": {"msg": f.error.msg, "timestamp": f.error.timestamp} if f.error else None,
        "client_conn": conn(f.client_conn, False),
        "server_conn": conn(f.server_conn, True),
    }
    if isinstance(f, http.HTTPFlow):
        r = f.request
        out["request"] = {
            **message(r),
            "method": r.data.method.decode("latin-1"),
            "scheme": r.data.scheme.decode("latin-1"),
            "host": r.host,
            "port": r.port,
            "path": r.data.path.decode("latin-1"),
            "url": r.url,
        }
        out["response"] = None
        if f.response:
            out["response"] = {**message(f.response), "status_code": f.response.status_code,
                               "reason": f.response.data.reason.decode("latin-1")}
        out["websocket"] = None
        if f.websocket:
            ws = f.websocket
            out["websocket"] = {
                "messages": [[int(m.type), m.from_client, m.content.hex(), m.timestamp] for m in ws.messages],
                "closed_by_client": ws.closed_by_client,
                "close_code": ws.close_code,
                "close_reason": ws.close_reason,
                "timestamp_end": ws.timestamp_end,
            }
    elif isinstance(f, (tcp.TCPFlow, udp.UDPFlow)):
        out["messages"] = [[m.from_client, m.content.hex(), m.timestamp] for m in f.messages]
    elif isinstance(f, dns.DNSFlow):
        out["request"] = dns_message(f.request)
        out["response"] = dns_message(f.response) if f.response else None
    return out


def exact(o):
    """Floats (times) as their repr strings: JSON readers need not round them exactly."""
    if isinstance(o, float):
        return repr(o)
    if isinstance(o, dict):
        return {k: exact(v) for k, v in o.items()}
    if isinstance(o, list):
        return [exact(v) for v in o]
    return o


def main():
    with open(sys.argv[1], "rb") as fo:
        flows = [exact(flow(f)) for f in io.FlowReader(fo).stream()]
    json.dump(flows, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
