"""The wire kept (issue 11 item 5): what a proxy forwards of an HTTP/1.1 head, byte for byte.

Usage:
  wire.py origin
  wire.py check --proxy HOST:PORT --origin HOST:PORT --mode regular|reverse|connect --case NAME
  wire.py cases

`origin` serves raw HTTP/1.1 on a free port of 127.0.0.1 and prints the port. It records
the raw head of every request it receives and the bytes it received in all, and answers
with a scripted raw response chosen by the path (query ignored):

  /order   response fields in a fixed case and order, with repeated names
  /reason  HTTP/1.1 299 Fidelity Custom Reason
  /early   103 Early Hints (with a Link field), then 200
  /fields  300 response fields
  other    200 OK

Requests for /__wire/seen and /__wire/reset, sent to it directly (never through the proxy),
read and clear the record; those connections are not recorded.

`check` runs one case through the proxy at --proxy, reaching the origin at --origin in the
given mode: regular (absolute-form requests to the proxy), reverse (origin-form, the proxy
was started as reverse:http://ORIGIN) or connect (origin-form inside a CONNECT tunnel to the
origin). Every client is a raw socket (or Python's h2, for the HTTP/2 cases, with prior
knowledge on a plain connection; those run outside tunnels, see H2_MODES), so case, order,
reason phrases and 1xx are visible. It
compares what the origin recorded and what the client read with what was sent; it prints
"ok CASE MODE" and exits 0, or prints what was sent and what arrived and exits 1.

`cases` prints each case and the modes it applies to, one a line: `NAME MODE...`.

Bounded: every socket has a timeout and a whole check an alarm; nothing sleeps to wait.
"""

import argparse
import json
import select
import signal
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions

TIMEOUT = 10
CHECK_DEADLINE = 60
ALL_MODES = ("regular", "reverse", "connect")
# HTTP/2 with prior knowledge is a claim about the server the client talks to: the proxy in
# regular and reverse mode, but the origin itself inside a CONNECT tunnel, where a proxy
# rightly speaks HTTP/2 upstream (flowgate does; mitmdump kills such flows everywhere). The
# origin here speaks only HTTP/1.1, so the HTTP/2 to HTTP/1.1 cases run outside tunnels.
H2_MODES = ("regular", "reverse")
CONTROL = b"/__wire/"

# Request fields of the order case: mixed case, one name in two places, Cookie twice (the
# origin got them lowercased and regrouped: x-dup one, x-dup two, cookie a=1, cookie b=2).
REQUEST_ORDER = [
    ("X-Order-A", "1"),
    ("X-Dup", "one"),
    ("Cookie", "a=1"),
    ("X-MiXeD-CaSe", "Yes"),
    ("X-Dup", "two"),
    ("Cookie", "b=2"),
    ("x-lower", "yes"),
    ("X-Order-B", "2"),
]

# Response fields of /order, in the same spirit; Set-Cookie can never be joined.
RESPONSE_ORDER = [
    ("X-Order-A", "1"),
    ("X-Dup", "one"),
    ("Set-Cookie", "a=1; Path=/"),
    ("X-MiXeD-CaSe", "Yes"),
    ("X-Dup", "two"),
    ("Set-Cookie", "b=2; Path=/"),
    ("x-lower", "yes"),
    ("X-Order-B", "2"),
]

REASON = "299 Fidelity Custom Reason"
EARLY_LINK = "</style.css>; rel=preload; as=style"
MANY = 300
MANY_FIELDS = [(f"X-Field-{i:03}", f"value-{i:03}") for i in range(MANY)]
# Far over any sensible bound on a head's size, in few enough fields that no bound on the
# field count is what refuses it: 128 fields of 8 KiB.
HUGE_FIELDS = [(f"X-Huge-{i:03}", "h" * 8192) for i in range(128)]


class Mismatch(Exception):
    """What arrived is not what was sent; the message shows both sides."""


# ---------------------------------------------------------------------------------------
# Heads.


def fields(head: bytes) -> list[tuple[str, str]]:
    """The (name, value) fields of a raw head, in order, names as they were written."""
    out = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        out.append((name, value.strip(" \t")))
    return out


def start_line(head: bytes) -> str:
    return head.decode("latin-1").split("\r\n", 1)[0]


def status_of(head: bytes) -> int:
    parts = start_line(head).split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise Mismatch(f"not a status line: {start_line(head)!r}")
    return int(parts[1])


def named(head: bytes, names) -> list[tuple[str, str]]:
    """The fields of `head` whose name (case-insensitively) is one of `names`, in order."""
    wanted = {n.lower() for n in names}
    return [(n, v) for n, v in fields(head) if n.lower() in wanted]


def values(head: bytes, name: str) -> list[str]:
    return [v for n, v in fields(head) if n.lower() == name.lower()]


def show(head: bytes, limit: int = 8192) -> str:
    text = head.decode("latin-1")
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(head)} bytes in all)"
    return "\n".join(f"    {line!r}" for line in text.split("\r\n"))


def show_fields(items) -> str:
    return "\n".join(f"    {n}: {v}" for n, v in items) or "    (none)"


def expect_fields(what: str, sent, head: bytes, names=None, case_sensitive=True) -> None:
    """The fields named like those `sent` arrived in `head` exactly: case, order, repeats."""
    got = named(head, names or [n for n, _ in sent])
    key = (lambda f: f) if case_sensitive else (lambda f: (f[0].lower(), f[1]))
    if [key(f) for f in got] == [key(f) for f in sent]:
        return
    first = next(
        (i for i, (a, b) in enumerate(zip(map(key, sent), map(key, got))) if a != b), min(len(sent), len(got))
    )
    raise Mismatch(
        f"{what}: the fields differ from field {first} on (names compared "
        f"{'exactly' if case_sensitive else 'ignoring case'}, order and repeats kept)\n"
        f"  sent:\n{show_fields(sent)}\n  arrived (those names only):\n{show_fields(got)}\n"
        f"  the whole head that arrived:\n{show(head)}"
    )


def request(method: str, target: str, host: str | None, items) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{n}: {v}" for n, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------------------------------
# A raw connection that reads heads and bodies.


class Conn:
    """One side of a raw connection: sends bytes, reads heads and bodies (with a timeout)."""

    def __init__(self, sock: socket.socket, name: str):
        self.sock = sock
        self.name = name
        self.buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def fill(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise Mismatch(f"{self.name}: nothing more within {TIMEOUT}s; so far {bytes(self.buf)[:2000]!r}") from None
        except ConnectionResetError:
            return False
        self.buf += data
        return bool(data)

    def read_head(self) -> bytes:
        start = 0
        while (end := self.buf.find(b"\r\n\r\n", start)) < 0:
            start = max(0, len(self.buf) - 3)
            if not self.fill():
                raise Mismatch(f"{self.name}: closed before a whole head; got {bytes(self.buf)[:2000]!r}")
        head = bytes(self.buf[: end + 4])
        del self.buf[: end + 4]
        return head

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise Mismatch(f"{self.name}: closed {n - len(self.buf)} bytes short of a body")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if not self.fill():
                raise Mismatch(f"{self.name}: closed inside a chunked body")
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def read_body(self, head: bytes, bodiless: bool) -> bytes:
        if bodiless:
            return b""
        if any("chunked" in v.lower() for v in values(head, "transfer-encoding")):
            body = b""
            while size := int(self.read_line().split(b";")[0], 16):
                body += self.read_exact(size)
                self.read_line()
            while self.read_line():
                pass
            return body
        if lengths := values(head, "content-length"):
            return self.read_exact(int(lengths[0]))
        while self.fill():
            pass
        body = bytes(self.buf)
        self.buf.clear()
        return body

    def read_response(self, method: str = "GET") -> tuple[list[bytes], bytes]:
        """The response's heads (any 1xx first, the final one last) and its body."""
        heads = []
        while True:
            try:
                head = self.read_head()
            except Mismatch as e:
                if not heads:
                    raise
                shown = "\n  then\n".join(show(h) for h in heads)
                raise Mismatch(f"{e}\n  after these heads (no final response):\n{shown}") from None
            heads.append(head)
            status = status_of(head)
            if 100 <= status < 200 and status != 101:
                continue
            bodiless = method == "HEAD" or status in (204, 304) or 100 <= status < 200
            return heads, self.read_body(head, bodiless)


# ---------------------------------------------------------------------------------------
# The origin.


class Record:
    """What reached the origin: each request's raw head, and the bytes of every connection
    (the control requests' connections apart)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.heads: list[bytes] = []
        self.received: dict[int, int] = {}
        self.control: set[int] = set()

    def seen(self) -> dict:
        with self.lock:
            return {
                "heads": [h.decode("latin-1") for h in self.heads],
                "bytes": sum(n for c, n in self.received.items() if c not in self.control),
            }

    def reset(self) -> None:
        with self.lock:
            self.heads.clear()
            for c in self.received:
                self.received[c] = 0


def response(status: str, items, body: bytes = b"", close: bool = False) -> bytes:
    items = list(items) + [("Content-Length", str(len(body)))]
    if close:
        items.append(("Connection", "close"))
    lines = [f"HTTP/1.1 {status}"] + [f"{n}: {v}" for n, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def answer(path: str, close: bool) -> bytes:
    if path == "/order":
        return response("200 OK", RESPONSE_ORDER, b"order\n", close)
    if path == "/reason":
        return response(REASON, [("Content-Type", "text/plain")], b"reason\n", close)
    if path == "/early":
        early = f"HTTP/1.1 103 Early Hints\r\nLink: {EARLY_LINK}\r\n\r\n".encode("latin-1")
        return early + response("200 OK", [("Content-Type", "text/plain")], b"early\n", close)
    if path == "/fields":
        return response("200 OK", MANY_FIELDS, b"fields\n", close)
    if path == "/cl-te":
        # A hostile upstream: a length beside a chunked body (RFC 9112 6.3: TE wins).
        head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n"
        head += "Connection: close\r\n" if close else ""
        return (head + "\r\n5\r\nhello\r\n0\r\n\r\n").encode("latin-1")
    if path == "/head-length":
        # The answer to a HEAD: the length a GET would have, and no body.
        return b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n"
    return response("200 OK", [("Content-Type", "text/plain")], b"ok\n", close)


class Counted(Conn):
    """An origin-side connection that counts what it receives into the record."""

    def __init__(self, sock, record: Record, ident: int):
        super().__init__(sock, "origin")
        self.record = record
        self.ident = ident

    def fill(self) -> bool:
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            return False
        with self.record.lock:
            self.record.received[self.ident] = self.record.received.get(self.ident, 0) + len(data)
        self.buf += data
        return bool(data)


def serve(sock: socket.socket, record: Record, ident: int) -> None:
    conn = Counted(sock, record, ident)
    with sock:
        while True:
            try:
                head = conn.read_head()
                target = (start_line(head).split(" ") + [""])[1]
                if target.encode("latin-1").startswith(CONTROL):
                    with record.lock:
                        record.control.add(ident)
                    if target == "/__wire/reset":
                        record.reset()
                    body = json.dumps(record.seen()).encode()
                    conn.send(response("200 OK", [("Content-Type", "application/json")], body, close=True))
                    return
                with record.lock:
                    record.heads.append(head)
                conn.read_body(head, bodiless=not (values(head, "content-length") or values(head, "transfer-encoding")))
                close = any("close" in v.lower() for v in values(head, "connection"))
                conn.send(answer(target.split("?")[0], close))
                if close:
                    return
            except (Mismatch, OSError):
                return


def origin() -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    print(server.getsockname()[1], flush=True)
    record = Record()
    ident = 0
    while True:
        sock, _ = server.accept()
        sock.settimeout(TIMEOUT)
        ident += 1
        threading.Thread(target=serve, args=(sock, record, ident), daemon=True).start()


# ---------------------------------------------------------------------------------------
# The checker's side.


class Wire:
    """How a client reaches the origin through the proxy in one mode."""

    def __init__(self, proxy: tuple[str, int], origin: tuple[str, int], mode: str):
        self.proxy = proxy
        self.origin = origin
        self.mode = mode

    def origin_authority(self) -> str:
        return f"{self.origin[0]}:{self.origin[1]}"

    def proxy_authority(self) -> str:
        return f"{self.proxy[0]}:{self.proxy[1]}"

    def target(self, path: str) -> str:
        """The request-target for `path` (absolute-form in regular mode)."""
        return f"http://{self.origin_authority()}{path}" if self.mode == "regular" else path

    def host(self) -> str:
        """The Host a client would send: the proxy's own address in reverse mode."""
        return self.proxy_authority() if self.mode == "reverse" else self.origin_authority()

    def connect(self) -> Conn:
        sock = socket.create_connection(self.proxy, timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock, "client")
        if self.mode == "connect":
            authority = self.origin_authority()
            conn.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            head = conn.read_head()
            if status_of(head) != 200:
                raise Mismatch(f"CONNECT {authority} was answered\n{show(head)}")
        return conn

    def exchange(self, raw: bytes, method: str = "GET") -> tuple[list[bytes], bytes]:
        conn = self.connect()
        try:
            conn.send(raw)
            return conn.read_response(method)
        finally:
            conn.close()

    def control(self, what: str) -> dict:
        sock = socket.create_connection(self.origin, timeout=TIMEOUT)
        conn = Conn(sock, "origin control")
        try:
            conn.send(request("GET", f"/__wire/{what}", self.origin_authority(), []))
            _, body = conn.read_response()
            return json.loads(body)
        finally:
            conn.close()

    def seen(self) -> list[bytes]:
        return [h.encode("latin-1") for h in self.control("seen")["heads"]]

    def one_seen(self, path: str) -> bytes:
        """The one head that reached the origin (`path` names it in the message)."""
        heads = self.seen()
        if len(heads) != 1:
            shown = "\n".join(show(h, 2000) for h in heads)
            raise Mismatch(f"{path}: {len(heads)} request heads reached the origin, not 1\n{shown}")
        return heads[0]


def final(heads: list[bytes], body: bytes, status: int = 200) -> bytes:
    if status_of(heads[-1]) != status:
        got = status_of(heads[-1])
        raise Mismatch(f"the client got status {got}, not {status}\n{show(heads[-1])}\n  body {body[:500]!r}")
    return heads[-1]


# ---------------------------------------------------------------------------------------
# HTTP/2 clients, with prior knowledge on a plain connection (H2_MODES says where).


def h2_exchange(wire: Wire, requests: list[list[tuple[str, str]]]) -> list[tuple[int, list, bytes]]:
    """Sends each request (pseudo-fields first) on its own stream, all at once; returns
    each stream's status, fields and body, in request order."""
    conn = wire.connect()
    sock = conn.sock
    h2c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
    h2c.initiate_connection()
    streams = {}
    for headers in requests:
        stream = h2c.get_next_available_stream_id()
        h2c.send_headers(stream, headers, end_stream=True)
        streams[stream] = {"status": None, "fields": [], "body": b"", "done": False}
    try:
        sock.sendall(h2c.data_to_send())
        while not all(s["done"] for s in streams.values()):
            try:
                data = sock.recv(65536)
            except socket.timeout:
                raise Mismatch(f"HTTP/2: no answer within {TIMEOUT}s; streams {streams}") from None
            except ConnectionResetError:
                data = b""
            if not data:
                raise Mismatch(f"HTTP/2: the proxy closed the connection; streams {streams}")
            for event in h2c.receive_data(data):
                state = streams.get(getattr(event, "stream_id", None))
                if isinstance(event, h2.events.ResponseReceived) and state:
                    state["fields"] = list(event.headers)
                    state["status"] = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived) and state:
                    state["body"] += event.data
                    h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded) and state:
                    state["done"] = True
                elif isinstance(event, h2.events.StreamReset) and state:
                    raise Mismatch(f"HTTP/2: stream {event.stream_id} was reset ({event.error_code!r})")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise Mismatch(f"HTTP/2: the proxy sent GOAWAY ({event.error_code!r}, {event.additional_data!r})")
            sock.sendall(h2c.data_to_send())
    finally:
        conn.close()
    return [(s["status"], s["fields"], s["body"]) for s in streams.values()]


def h2_request(wire: Wire, path: str, items) -> list[tuple[str, str]]:
    # In reverse mode the client addresses the proxy itself.
    authority = wire.proxy_authority() if wire.mode == "reverse" else wire.origin_authority()
    return [(":method", "GET"), (":scheme", "http"), (":authority", authority), (":path", path)] + list(items)


def h2_ok(results) -> None:
    for status, items, body in results:
        if status != 200:
            raise Mismatch(f"HTTP/2: status {status}, fields {items}, body {body[:500]!r}")


# ---------------------------------------------------------------------------------------
# The cases.

CASES = {}


def case(*modes):
    def register(f):
        CASES[f.__name__] = (f, modes)
        return f

    return register


@case(*ALL_MODES)
def request_order(wire: Wire) -> None:
    """Request fields reach the origin with their case, order and repeats."""
    heads, body = wire.exchange(request("GET", wire.target("/order"), wire.host(), REQUEST_ORDER))
    final(heads, body)
    expect_fields("request at the origin", REQUEST_ORDER, wire.one_seen("/order"))


@case(*ALL_MODES)
def response_order(wire: Wire) -> None:
    """Response fields reach the client with their case, order and repeats."""
    heads, body = wire.exchange(request("GET", wire.target("/order"), wire.host(), []))
    expect_fields("response at the client", RESPONSE_ORDER, final(heads, body))


@case(*ALL_MODES)
def reason(wire: Wire) -> None:
    """A custom reason phrase reaches the client."""
    heads, body = wire.exchange(request("GET", wire.target("/reason"), wire.host(), []))
    got = start_line(final(heads, body, 299))
    if got != f"HTTP/1.1 {REASON}":
        raise Mismatch(f"the origin sent 'HTTP/1.1 {REASON}'; the client got {got!r}")


@case(*ALL_MODES)
def early_hints(wire: Wire) -> None:
    """103 Early Hints is forwarded, before the final response (RFC 9110 15.2), and the
    connection goes on after it (the 200 was framed as a response of its own)."""
    conn = wire.connect()
    try:
        conn.send(request("GET", wire.target("/early"), wire.host(), []))
        heads, body = conn.read_response()
        shown = "\n  then\n".join(show(h) for h in heads)
        if len(heads) != 2 or status_of(heads[0]) != 103 or status_of(heads[1]) != 200 or body != b"early\n":
            raise Mismatch(f"the origin sent 103 (Link) then 200 'early'; the client got\n{shown}\n  body {body!r}")
        if values(heads[0], "link") != [EARLY_LINK]:
            raise Mismatch(f"the 103 lost its Link field ({EARLY_LINK}):\n{shown}")
        conn.send(request("GET", wire.target("/after"), wire.host(), []))
        try:
            final(*conn.read_response())
        except Mismatch as e:
            raise Mismatch(f"103 and 200 arrived, but the next request on the connection failed:\n{e}") from None
    finally:
        conn.close()


@case(*ALL_MODES)
def options_asterisk(wire: Wire) -> None:
    """OPTIONS for the server as a whole goes upstream as `OPTIONS *` (RFC 9112 3.2.4):
    from the absolute form without a path in regular mode, as sent otherwise."""
    target = f"http://{wire.origin_authority()}" if wire.mode == "regular" else "*"
    heads, body = wire.exchange(request("OPTIONS", target, wire.host(), []), "OPTIONS")
    final(heads, body)
    head = wire.one_seen(f"OPTIONS {target}")
    if start_line(head) != "OPTIONS * HTTP/1.1":
        raise Mismatch(f"sent 'OPTIONS {target} HTTP/1.1'; the origin got {start_line(head)!r}\n{show(head)}")


@case("regular")
def host_from_absolute_form(wire: Wire) -> None:
    """A Host that differs from the absolute-form authority is replaced by it (RFC 9112 3.2.2)."""
    heads, body = wire.exchange(request("GET", wire.target("/host"), "elsewhere.example:8000", []))
    final(heads, body)
    head = wire.one_seen("/host")
    if values(head, "host") != [wire.origin_authority()]:
        raise Mismatch(
            f"sent {wire.target('/host')} with Host: elsewhere.example:8000; the origin got Host "
            f"{values(head, 'host')}, not [{wire.origin_authority()!r}]\n{show(head)}"
        )


@case(*ALL_MODES)
def request_fields_300(wire: Wire) -> None:
    """300 request fields reach the origin intact, and the connection goes on after them."""
    conn = wire.connect()
    try:
        conn.send(request("GET", wire.target("/many"), wire.host(), MANY_FIELDS))
        final(*conn.read_response())
        after = [("X-After", "yes")]
        conn.send(request("GET", wire.target("/after"), wire.host(), after))
        final(*conn.read_response())
    finally:
        conn.close()
    heads = wire.seen()
    if len(heads) != 2:
        shown = "\n".join(show(h, 2000) for h in heads)
        raise Mismatch(f"sent /many (300 fields) then /after on one connection; {len(heads)} heads arrived\n{shown}")
    expect_fields("the 300-field request at the origin", MANY_FIELDS, heads[0])
    expect_fields("the request after it", after, heads[1])


@case(*ALL_MODES)
def response_fields_300(wire: Wire) -> None:
    """300 response fields reach the client intact."""
    heads, body = wire.exchange(request("GET", wire.target("/fields"), wire.host(), []))
    expect_fields("the 300-field response at the client", MANY_FIELDS, final(heads, body))


@case(*ALL_MODES)
def huge_head_431(wire: Wire) -> None:
    """A request head of 1 MiB of fields is refused with 431, and nothing reaches the origin."""
    raw = request("GET", wire.target("/huge"), wire.host(), HUGE_FIELDS)
    conn = wire.connect()
    sent = 0
    try:
        # Read while writing: a proxy may answer (and close) long before the head ends.
        while sent < len(raw) and b"\r\n\r\n" not in conn.buf:
            readable, writable, _ = select.select([conn.sock], [conn.sock], [], TIMEOUT)
            if not readable and not writable:
                raise Mismatch(f"the proxy neither read nor answered for {TIMEOUT}s after {sent} bytes")
            if readable and not conn.fill():
                break
            if writable and not readable:
                try:
                    sent += conn.sock.send(raw[sent : sent + 65536])
                except (BrokenPipeError, ConnectionResetError):
                    break
        if not conn.buf and not conn.fill():
            raise Mismatch(f"the proxy closed without an answer after {sent} of {len(raw)} bytes")
        head = conn.read_head()
    finally:
        conn.close()
    if status_of(head) != 431:
        raise Mismatch(f"sent a {len(raw)}-byte head ({sent} bytes written); the client got\n{show(head)}")
    got = wire.control("seen")
    if got["heads"] or got["bytes"]:
        raise Mismatch(f"the client got 431, but the origin received {got['bytes']} bytes, {len(got['heads'])} heads")


@case(*ALL_MODES)
def upstream_cl_te(wire: Wire) -> None:
    """A hostile upstream's Content-Length beside Transfer-Encoding never reaches the
    client: the body is chunked again, without the length."""
    heads, body = wire.exchange(request("GET", wire.target("/cl-te"), wire.host(), []))
    head = final(heads, body)
    if values(head, "content-length") or body != b"hello":
        raise Mismatch(f"the origin sent Content-Length 100 beside a chunked 'hello'; the client got\n{show(head)}\n  body {body!r}")


@case(*ALL_MODES)
def head_keeps_length(wire: Wire) -> None:
    """The answer to a HEAD keeps its Content-Length and has no body; the connection
    carries the next request."""
    conn = wire.connect()
    try:
        conn.send(request("HEAD", wire.target("/head-length"), wire.host(), []))
        heads, body = conn.read_response("HEAD")
        if values(final(heads, body), "content-length") != ["1234"] or body:
            raise Mismatch(f"the origin answered HEAD with Content-Length 1234; the client got\n{show(heads[-1])}")
        conn.send(request("GET", wire.target("/after-head"), wire.host(), []))
        final(*conn.read_response())
    finally:
        conn.close()


@case(*ALL_MODES)
def codings_kept(wire: Wire) -> None:
    """A request body coded `gzip, chunked` reaches the origin chunked with its gzip
    label (the proxy re-chunks, it does not decode gzip), and without a length."""
    raw = request("POST", wire.target("/coded"), wire.host(), [("Transfer-Encoding", "gzip, chunked")])
    raw += b"4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n"
    final(*wire.exchange(raw))
    head = wire.one_seen("/coded")
    codings = ", ".join(values(head, "transfer-encoding")).lower().replace(" ", "")
    if codings != "gzip,chunked" or values(head, "content-length"):
        raise Mismatch(f"sent Transfer-Encoding: gzip, chunked; the origin got\n{show(head)}")


@case(*ALL_MODES)
def connection_cannot_unframe(wire: Wire) -> None:
    """`Connection: content-length, host` cannot strip the length or the Host: a body that
    holds a request stays a body (one request reaches the origin, with its length)."""
    smuggled = request("GET", "/smuggled", wire.origin_authority(), [])
    raw = request("POST", wire.target("/carrier"), wire.host(),
                  [("Connection", "content-length, host"), ("Content-Length", str(len(smuggled)))]) + smuggled
    final(*wire.exchange(raw))
    head = wire.one_seen("/carrier")
    if values(head, "content-length") != [str(len(smuggled))] or not values(head, "host"):
        raise Mismatch(f"Connection named Content-Length and Host; the origin got\n{show(head)}")


@case(*ALL_MODES)
def http10_chunked_closes(wire: Wire) -> None:
    """An HTTP/1.0 request with Transfer-Encoding is answered, then its connection closes,
    keep-alive or not (RFC 9112 6.1)."""
    raw = request("POST", wire.target("/old"), wire.host(), [("Connection", "keep-alive"), ("Transfer-Encoding", "chunked")])
    raw = raw.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1) + b"2\r\nhi\r\n0\r\n\r\n"
    heads, body = wire.exchange(raw)
    head = final(heads, body)
    if "close" not in ", ".join(values(head, "connection")).lower():
        raise Mismatch(f"HTTP/1.0 with Transfer-Encoding: the connection should close; the client got\n{show(head)}")


@case(*ALL_MODES)
def duplicate_host_400(wire: Wire) -> None:
    """A request with two Host fields gets 400 (RFC 9112 3.2) and never reaches the origin."""
    raw = request("GET", wire.target("/two-hosts"), wire.host(), [("Host", "other.example")])
    heads, body = wire.exchange(raw)
    final(heads, body, 400)
    if wire.seen():
        raise Mismatch("two Host fields: the client got 400, but a request reached the origin")


@case(*H2_MODES)
def h2_cookies_joined(wire: Wire) -> None:
    """An HTTP/2 client's cookie fields reach an HTTP/1.1 origin as one, joined with "; "
    (RFC 9113 8.2.3)."""
    sent = [("cookie", "a=1"), ("x-between", "1"), ("cookie", "b=2")]
    h2_ok(h2_exchange(wire, [h2_request(wire, "/h2-cookies", sent)]))
    head = wire.one_seen("/h2-cookies")
    if values(head, "cookie") != ["a=1; b=2"]:
        got = values(head, "cookie")
        raise Mismatch(f"sent cookie a=1, cookie b=2 over HTTP/2; the origin got cookie {got}\n{show(head)}")


@case(*H2_MODES)
def h2_repeats_kept(wire: Wire) -> None:
    """An HTTP/2 client's repeated fields reach an HTTP/1.1 origin as lines of their own,
    each name's values in order (not how names interleave: the h2 crate's HeaderMap groups them)."""
    sent = [(n.lower(), v) for n, v in REQUEST_ORDER if n.lower() != "cookie"]
    h2_ok(h2_exchange(wire, [h2_request(wire, "/h2-repeats", sent)]))
    head = wire.one_seen("/h2-repeats")
    for name in dict(sent):
        mine = [f for f in sent if f[0] == name]
        expect_fields(f"HTTP/2 request's {name} at the origin", mine, head, case_sensitive=False)


@case(*H2_MODES)
def h2_te_listed_in_connection(wire: Wire) -> None:
    """Whenever TE reaches an HTTP/1.1 origin (whether the HTTP/2 client sent `te: trailers`
    or the proxy added it), Connection lists te (RFC 9110 7.6.1, 10.1.4)."""
    with_te = h2_request(wire, "/h2-te-sent", [("te", "trailers")])
    without = h2_request(wire, "/h2-te-not-sent", [])
    h2_ok(h2_exchange(wire, [with_te, without]))
    heads = wire.seen()
    paths = sorted(start_line(h).split(" ")[1] for h in heads)
    if paths != ["/h2-te-not-sent", "/h2-te-sent"]:
        raise Mismatch(f"two HTTP/2 requests, but the origin got {paths}")
    for head in heads:
        connection = {t.strip().lower() for v in values(head, "connection") for t in v.split(",")}
        if values(head, "te") and "te" not in connection:
            raise Mismatch(f"TE reached the origin without Connection: te\n{show(head)}")


# ---------------------------------------------------------------------------------------


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def check(args) -> int:
    function, modes = CASES[args.case]
    if args.mode not in modes:
        print(f"case {args.case} does not apply in {args.mode} mode (only {' '.join(modes)})")
        return 2

    def out_of_time(*_):
        raise Mismatch(f"the case took over {CHECK_DEADLINE}s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(CHECK_DEADLINE)
    wire = Wire(args.proxy, args.origin, args.mode)
    try:
        wire.control("reset")
        function(wire)
    except (Mismatch, OSError, h2.exceptions.H2Error) as e:
        print(f"FAIL {args.case} {args.mode}: {function.__doc__.split(chr(10))[0]}\n{e}")
        return 1
    print(f"ok {args.case} {args.mode}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("origin")
    sub.add_parser("cases")
    c = sub.add_parser("check")
    c.add_argument("--proxy", type=host_port, required=True)
    c.add_argument("--origin", type=host_port, required=True)
    c.add_argument("--mode", choices=ALL_MODES, required=True)
    c.add_argument("--case", choices=list(CASES), required=True)
    args = parser.parse_args()
    if args.command == "origin":
        origin()
    elif args.command == "cases":
        for name, (_, modes) in CASES.items():
            print(name, *modes)
    else:
        return check(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
