"""Evaluates the filter cases of cases.json with mitmproxy's own flowfilter.

Builds each fixture flow of cases.json as mitmproxy objects, then, for every case, parses
the filter with `mitmproxy.flowfilter.parse` and applies it; for every parse-error entry,
reports whether mitmproxy parses it. Prints one JSON object on stdout:

    {"mitmproxy": "11.0.2",
     "cases": [{"result": true | false | null, "error": null | "..."}, ...],
     "errors": [{"parses": true | false}, ...]}

in the order of the file. Run by tests/cases.rs with mitmproxy's Python:
`python mitmproxy_check.py cases.json`.
"""

import json
import sys

from mitmproxy import connection
from mitmproxy import dns
from mitmproxy import flow
from mitmproxy import flowfilter
from mitmproxy import http
from mitmproxy import tcp
from mitmproxy import udp
from mitmproxy import version
from mitmproxy import websocket

# 11.x calls it Message, 12.x DNSMessage.
DNSMessage = getattr(dns, "DNSMessage", None) or getattr(dns, "Message")

WS_OPCODES = {"text": 1, "binary": 2}


def data(value):
    """A fixture body: null (absent), a string (UTF-8) or {"hex": "..."}."""
    if value is None:
        return None
    if isinstance(value, dict):
        return bytes.fromhex(value["hex"])
    return value.encode("utf-8")


def address(text):
    """ "host:port" or "[v6]:port" as mitmproxy keeps it: (host without brackets, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def headers(pairs):
    return http.Headers([(n.encode(), data(v)) for n, v in pairs])


def connections(spec):
    client = connection.Client(
        peername=address(spec.get("client", "10.0.0.1:50000")),
        sockname=("10.0.0.2", 8080),
        timestamp_start=1.0,
    )
    server = connection.Server(address=address(spec["server"]) if spec.get("server") else None)
    return client, server


def http_flow(spec, client, server):
    f = http.HTTPFlow(client, server)
    r = spec["request"]
    method = r.get("method", "GET")
    host = r["host"].strip("[]")
    port = r.get("port") or (443 if r.get("scheme") == "https" else 80)
    if method.upper() == "CONNECT":
        scheme, authority, path = b"", f"{r['host']}:{port}".encode(), b""
    else:
        scheme, authority, path = r.get("scheme", "http").encode(), b"", r.get("path", "/").encode()
    f.request = http.Request(
        host=host,
        port=port,
        method=method.encode(),
        scheme=scheme,
        authority=authority,
        path=path,
        http_version=b"HTTP/1.1",
        headers=headers(r.get("headers", [])),
        content=data(r.get("body")),
        trailers=None,
        timestamp_start=1.0,
        timestamp_end=2.0,
    )
    if (resp := spec.get("response")) is not None:
        f.response = http.Response(
            http_version=b"HTTP/1.1",
            status_code=resp["status"],
            reason=resp.get("reason", "").encode(),
            headers=headers(resp.get("headers", [])),
            content=data(resp.get("body")),
            trailers=None,
            timestamp_start=3.0,
            timestamp_end=4.0,
        )
    if (messages := spec.get("websocket")) is not None:
        f.websocket = websocket.WebSocketData()
        for m in messages:
            # mitmproxy records data messages only; ping, pong and close are not messages.
            if m["kind"] in WS_OPCODES:
                f.websocket.messages.append(
                    websocket.WebSocketMessage(WS_OPCODES[m["kind"]], m["from_client"], data(m["data"]), 5.0)
                )
    return f


def dns_message(spec, query):
    def records(key):
        return [
            dns.ResourceRecord(name=rr["name"], type=rr["type"], class_=1, ttl=60, data=bytes.fromhex(rr["data_hex"]))
            for rr in spec.get(key, [])
        ]

    return DNSMessage(
        timestamp=1.0,
        id=spec.get("id", 1),
        query=query,
        op_code=0,
        authoritative_answer=False,
        truncation=False,
        recursion_desired=True,
        recursion_available=not query,
        reserved=0,
        response_code=0,
        questions=[dns.Question(name=q["name"], type=q["type"], class_=1) for q in spec.get("questions", [])],
        answers=records("answers"),
        authorities=records("authorities"),
        additionals=records("additionals"),
    )


def build(spec):
    client, server = connections(spec)
    kind = spec["kind"]
    if kind == "http":
        f = http_flow(spec, client, server)
    elif kind in ("tcp", "udp"):
        module = tcp if kind == "tcp" else udp
        f = (module.TCPFlow if kind == "tcp" else module.UDPFlow)(client, server)
        message = module.TCPMessage if kind == "tcp" else module.UDPMessage
        f.messages = [message(m["from_client"], data(m["data"]), 5.0) for m in spec.get("messages", [])]
    elif kind == "dns":
        f = dns.DNSFlow(client, server)
        f.request = dns_message(spec["query"], True)
        if (resp := spec.get("response")) is not None:
            f.response = dns_message(resp, False)
    else:
        raise ValueError(f"unknown flow kind {kind!r}")
    if spec.get("error"):
        f.error = flow.Error(spec["error"])
    f.marked = spec.get("marked", "")
    f.comment = spec.get("comment", "")
    # flowgate keeps metadata sorted by key.
    f.metadata = dict(sorted(spec.get("metadata", {}).items()))
    f.is_replay = spec.get("replay")
    return f


def main():
    with open(sys.argv[1], encoding="utf-8") as file:
        fixture = json.load(file)
    flows = {name: build(spec) for name, spec in fixture["flows"].items()}
    cases = []
    for case in fixture["cases"]:
        try:
            flt = flowfilter.parse(case["filter"])
        except ValueError as e:
            cases.append({"result": None, "error": str(e)})
            continue
        cases.append({"result": bool(flt(flows[case["flow"]])), "error": None})
    errors = []
    for entry in fixture["errors"]:
        try:
            flowfilter.parse(entry["filter"])
            errors.append({"parses": True})
        except ValueError:
            errors.append({"parses": False})
    json.dump({"mitmproxy": version.VERSION, "cases": cases, "errors": errors}, sys.stdout)


if __name__ == "__main__":
    main()
