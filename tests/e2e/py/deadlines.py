"""Slow and silent peers at every phase, all at once, against a running flowgate.

usage: deadlines.py PROXY_PORT ORIGIN_PORT

ORIGIN_PORT is a well-behaved HTTP origin (it serves /big/N with N bytes). The script also
runs hostile origins of its own: one that accepts and never answers, one that sends a
response head and part of its body and then stalls, and one that never reads a request.

Every phase runs concurrently with a normal client making requests through the proxy.
It prints one JSON object: for each phase, what the peer saw and after how many seconds,
and for the normal client how many requests succeeded and the slowest one.
"""

import asyncio
import json
import socket
import ssl
import struct
import sys
import time

PROXY = ("127.0.0.1", int(sys.argv[1]))
ORIGIN = int(sys.argv[2])
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Connections kept open (unread) until the script ends.
HELD = []


def client_hello(name: str) -> bytes:
    """A real ClientHello for `name`, as Python's TLS stack would send it."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def open_proxy(rcvbuf: int = 0):
    if rcvbuf:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, PROXY)
        return await asyncio.open_connection(sock=sock)
    return await asyncio.open_connection(*PROXY)


async def until_closed(reader, limit: float = 20.0) -> tuple[str, bytes]:
    """Reads until the proxy closes the connection: ("closed", what came) or ("open", ...)."""
    got = b""
    try:
        async with asyncio.timeout(limit):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return "closed", got
                got += chunk
    except TimeoutError:
        return "open", got
    except (ConnectionResetError, BrokenPipeError):
        return "closed", got


async def connect_tunnel(host: str, port: int, first: bytes = b""):
    """A CONNECT tunnel; `first` goes in the same write, so the tunnel's first bytes
    never wait on this script (a busy machine must not make them look like silence,
    which after server_first_timeout is a server-speaks-first relay)."""
    reader, writer = await open_proxy()
    writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode() + first)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return reader, writer


def result(start: float, outcome: str, got: bytes) -> dict:
    """What a phase saw; `start` is taken before its connection is opened, so the proxy's
    deadline can only have started later."""
    first = got.split(b"\r\n", 1)[0].decode("latin-1") if got else ""
    return {"outcome": outcome, "after": round(time.monotonic() - start, 3), "first": first, "bytes": len(got)}


async def silent():
    start = time.monotonic()
    reader, writer = await open_proxy()
    return result(start, *await until_closed(reader))


async def connect_silent():
    start = time.monotonic()
    reader, writer = await connect_tunnel("127.0.0.1", ORIGIN)
    return result(start, *await until_closed(reader))


async def half_hello():
    hello = client_hello("localhost")
    start = time.monotonic()
    reader, writer = await connect_tunnel("localhost", ORIGIN, hello[: len(hello) // 2])
    return result(start, *await until_closed(reader))


async def mid_handshake():
    # The whole ClientHello, then nothing: flowgate answers its flight and waits.
    hello = client_hello("localhost")
    start = time.monotonic()
    reader, writer = await connect_tunnel("localhost", ORIGIN, hello)
    return result(start, *await until_closed(reader))


async def mid_head():
    start = time.monotonic()
    reader, writer = await open_proxy()
    writer.write(f"GET http://127.0.0.1:{ORIGIN}/slow HTTP/1.1\r\nHost: x\r\n".encode())
    return result(start, *await until_closed(reader))


async def mid_body():
    start = time.monotonic()
    reader, writer = await open_proxy()
    writer.write(
        f"POST http://127.0.0.1:{ORIGIN}/slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789".encode()
    )
    return result(start, *await until_closed(reader))


async def idle_h2():
    start = time.monotonic()
    reader, writer = await open_proxy()
    writer.write(H2_PREFACE + struct.pack(">I", 0)[1:] + bytes([4, 0, 0, 0, 0, 0]))
    outcome, got = await until_closed(reader)
    # GOAWAY is frame type 7.
    frames, at = [], 0
    while at + 9 <= len(got):
        length = int.from_bytes(got[at : at + 3], "big")
        frames.append(got[at + 3])
        at += 9 + length
    out = result(start, outcome, b"")
    out["goaway"] = 7 in frames
    return out


async def slow_read():
    # Asks for a large body with a tiny receive window and reads none of it.
    reader, writer = await open_proxy(rcvbuf=4096)
    writer.write(f"GET http://127.0.0.1:{ORIGIN}/big/500000000 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    HELD.append((reader, writer))
    return {"outcome": "unread"}


async def request(port: int, path: str = "/", method: str = "GET", body: bytes = b"", limit: float = 20.0):
    """One request through the proxy to 127.0.0.1:port; what the client saw and when."""
    reader, writer = await open_proxy()
    head = f"{method} http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n")
    start = time.monotonic()

    async def send_body():
        try:
            view = memoryview(body)
            for at in range(0, len(body), 1 << 16):
                writer.write(view[at : at + (1 << 16)])
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass

    sending = asyncio.create_task(send_body()) if body else None
    out = result(start, *await until_closed(reader, limit))
    if sending:
        sending.cancel()
    return out


async def normal_client(stop: asyncio.Event):
    ok, slowest, failures = 0, 0.0, []
    while not stop.is_set():
        start = time.monotonic()
        reply = await request(ORIGIN, "/normal")
        took = time.monotonic() - start
        if reply["first"].startswith("HTTP/1.1 200"):
            ok += 1
            slowest = max(slowest, took)
        else:
            failures.append(reply)
        # Paced, so the phases are measured on a machine that is not saturated.
        await asyncio.sleep(0.02)
    return {"ok": ok, "slowest": round(slowest, 3), "failures": failures}


async def hostile_origins():
    async def silent_origin(reader, writer):
        await reader.read()

    async def stalling_origin(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await reader.read()

    async def deaf_origin(reader, writer):
        # Reads the head, then nothing more: the request body backs up.
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(3600)

    servers = {}
    for name, handler in [("silent", silent_origin), ("stalling", stalling_origin), ("deaf", deaf_origin)]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, limit=1 << 16)
        if name == "deaf":
            for sock in server.sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        servers[name] = server
    return servers


async def main():
    origins = await hostile_origins()
    port = {name: s.sockets[0].getsockname()[1] for name, s in origins.items()}
    stop = asyncio.Event()
    normal = asyncio.create_task(normal_client(stop))
    phases = {
        "silent": silent(),
        "connect_silent": connect_silent(),
        "half_hello": half_hello(),
        "mid_handshake": mid_handshake(),
        "mid_head": mid_head(),
        "mid_body": mid_body(),
        "idle_h2": idle_h2(),
        "slow_read": slow_read(),
        "upstream_silent": request(port["silent"]),
        "upstream_stalls_body": request(port["stalling"]),
        "upstream_reads_nothing": request(port["deaf"], method="POST", body=b"y" * (64 << 20)),
    }
    names = list(phases)
    results = await asyncio.gather(*phases.values())
    stop.set()
    out = dict(zip(names, results))
    out["normal"] = await normal
    print(json.dumps(out))


asyncio.run(main())
