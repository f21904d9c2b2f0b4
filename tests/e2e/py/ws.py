"""WebSocket peers for the e2e tests, on the `websockets` package (tests/e2e/requirements.txt).

  ws.py server [--tls CERT KEY] [--compression deflate|none]
      An echo server on 127.0.0.1: prints its port, then echoes every message. Asked
      "extensions?" it answers with what it negotiated and the offer it got; asked "close
      please" it closes with 4002 "server bye". Plain HTTP requests for /page get a page
      whose script opens a WebSocket back to /chat, sends "hello Example", writes the
      answer into <p id="out"> and acknowledges it; the page's last script (/wait.js)
      is answered only after the acknowledgement, so the page has loaded once the answer
      is in it (what `chromium --dump-dom` waits for).
  ws.py echo
      A plain echo server on wsproto (permessage-deflate, no message cap, no pings of its
      own), the server under test for Autobahn's fuzzing client (tests/e2e/autobahn.rs);
      prints its port. wsproto rather than websockets: websockets answers a close that
      comes between the fragments of a message with 1002 (Autobahn 7.1.5 fails on it).
  ws.py autobahn-client BASE [--proxy URL]
      The client under test for Autobahn's fuzzing server (kosoku -m fuzzingserver):
      asks /getCaseCount, echoes every message of /runCase?case=N for each case (one at a
      time), then asks /updateReports; offers permessage-deflate with the parameters the
      12.x/13.x cases take.
  ws.py client URL [--proxy URL] [--ca PEM] [--compression deflate|none]
      Drives the server through flowgate and prints one JSON line of what it saw: text,
      1 MiB of binary, a fragmented message, a ping, a close with 4000 "bye" from the
      client, then a second connection the server closes.
  ws.py converse URL [--proxy URL] --expect N [--send TEXT]...
      Sends each TEXT, reads until N messages came (or 20 s, or the close), and prints
      {"received": [...], "close": [code, reason]}.
  ws.py bomb-server
      A raw WebSocket server: agrees to permessage-deflate and sends one compressed
      message that inflates to 256 MiB of zeros.
  ws.py bomb-client URL --proxy URL
      The same bomb from a raw client (the request goes to the proxy in absolute form);
      prints {"close": code} of the close frame that came back.
  ws.py flood-server
      Sends 100 messages of 1 MiB to each client, then closes with 1000.
  ws.py slow-client URL --proxy URL
      Reads what the flood server sends, slowly; prints {"messages": n, "bytes": n}.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import ssl
import struct
import sys
import zlib

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


PAGE = """<!doctype html><html><head><title>ws</title></head><body><p id="out">waiting</p>
<script>
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/chat");
ws.onopen = () => ws.send("hello Example");
ws.onmessage = (e) => { document.getElementById("out").textContent = "got: " + e.data; ws.send("ack"); };
ws.onerror = () => { document.getElementById("out").textContent = "error"; };
</script>
<script src="/wait.js"></script></body></html>
"""


def compression(name):
    return None if name == "none" else "deflate"


async def run_server(args):
    acknowledged = asyncio.Event()

    async def echo(ws):
        try:
            async for message in ws:
                if message == "ack":
                    acknowledged.set()
                    await ws.close(1000)
                elif message == "extensions?":
                    offer = ws.request.headers.get("Sec-WebSocket-Extensions", "")
                    names = [e.name for e in ws.protocol.extensions]
                    await ws.send(json.dumps({"offer": offer, "negotiated": names}))
                elif message == "close please":
                    await ws.close(4002, "server bye")
                else:
                    await ws.send(message)
        except websockets.ConnectionClosed:
            pass

    async def page(connection, request):
        if request.path == "/page":
            response = connection.respond(200, PAGE)
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            return response
        if request.path == "/wait.js":
            try:
                await asyncio.wait_for(acknowledged.wait(), 20)
            except asyncio.TimeoutError:
                pass
            response = connection.respond(200, "// the answer is in the page\n")
            response.headers["Content-Type"] = "text/javascript"
            return response
        return None

    context = None
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls[0], args.tls[1])
    async with serve(echo, "127.0.0.1", 0, ssl=context, compression=compression(args.compression),
                     max_size=None, process_request=page) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


async def run_echo(args):
    import wsproto
    import wsproto.events as ev
    from wsproto.extensions import PerMessageDeflate

    async def handle(reader, writer):
        conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        parts = {True: [], False: []}  # text?, the message so far
        closing = False
        try:
            while True:
                data = await reader.read(65536)
                conn.receive_data(data or None)
                for event in conn.events():
                    if isinstance(event, ev.Request):
                        out = conn.send(ev.AcceptConnection(extensions=[PerMessageDeflate()]))
                    elif isinstance(event, ev.Message):
                        text = isinstance(event, ev.TextMessage)
                        parts[text].append(event.data)
                        out = b""
                        if event.message_finished:
                            whole = ("" if text else b"").join(parts[text])
                            parts[text] = []
                            out = conn.send(ev.TextMessage(data=whole) if text else ev.BytesMessage(data=whole))
                    elif isinstance(event, ev.Ping):
                        out = conn.send(event.response())
                    elif isinstance(event, ev.CloseConnection):
                        if conn.state == wsproto.connection.ConnectionState.REMOTE_CLOSING:
                            out = conn.send(event.response())
                        else:
                            # wsproto found a protocol error (1002, 1007, ...): say so, hang up.
                            out = frame(8, struct.pack("!H", event.code) + (event.reason or "").encode()[:123])
                        closing = True
                    else:
                        out = b""
                    writer.write(out)
                await writer.drain()
                if not data or closing or conn.state == wsproto.connection.ConnectionState.CLOSED:
                    break
        except wsproto.utilities.RemoteProtocolError as e:
            # The client broke the protocol: tell it why (1002, 1007, ...), then hang up.
            if e.event_hint is not None:
                try:
                    writer.write(conn.send(e.event_hint))
                    await writer.drain()
                except (ConnectionError, wsproto.utilities.LocalProtocolError):
                    pass
        except (ConnectionError, wsproto.utilities.LocalProtocolError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


async def run_autobahn_client(args):
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    offer = ClientPerMessageDeflateFactory(client_no_context_takeover=True, client_max_window_bits=True)
    options = dict(max_size=None, max_queue=None, ping_interval=None, open_timeout=30, close_timeout=10,
                   proxy=args.proxy, extensions=[offer], compression=None)
    base = args.url.rstrip("/")
    async with connect(f"{base}/getCaseCount", **options) as ws:
        count = int(await ws.recv())
    for case in range(1, count + 1):
        try:
            async with connect(f"{base}/runCase?case={case}&agent=flowgate", **options) as ws:
                async for message in ws:
                    await ws.send(message)
        except Exception:
            pass  # many cases end in a protocol error or an abrupt close on purpose
    async with connect(f"{base}/updateReports?agent=flowgate", **options):
        pass
    print(json.dumps({"cases": count}), flush=True)


async def run_client(args):
    context = None
    if args.url.startswith("wss:"):
        context = ssl.create_default_context(cafile=args.ca)
    options = dict(ssl=context, compression=compression(args.compression), max_size=None)
    if args.proxy:
        options["proxy"] = args.proxy
    else:
        options["proxy"] = None
    report = {}
    async with connect(args.url, **options) as ws:
        report["client_negotiated"] = [e.name for e in ws.protocol.extensions]
        await ws.send("extensions?")
        report["server"] = json.loads(await ws.recv())
        await ws.send("hello")
        report["text"] = await ws.recv() == "hello"
        blob = os.urandom(1 << 20)
        await ws.send(blob)
        report["binary"] = await ws.recv() == blob
        await ws.send(["frag", "mented"])
        report["fragmented"] = await ws.recv() == "fragmented"
        pong = await ws.ping(b"p1")
        await asyncio.wait_for(pong, 10)
        report["ping"] = True
        await ws.close(4000, "bye")
        report["client_close"] = [ws.close_code, ws.close_reason]
    async with connect(args.url, **options) as ws:
        await ws.send("close please")
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed:
            pass
        report["server_close"] = [ws.close_code, ws.close_reason]
    print(json.dumps(report), flush=True)


async def run_converse(args):
    received = []

    async def read(ws):
        try:
            while len(received) < args.expect:
                received.append(await ws.recv())
        except websockets.ConnectionClosed:
            pass

    async with connect(args.url, proxy=args.proxy, max_size=None) as ws:
        reader = asyncio.create_task(read(ws))
        for text in args.send:
            await ws.send(text)
        try:
            await asyncio.wait_for(reader, 20)
        except asyncio.TimeoutError:
            pass
    print(json.dumps({"received": received, "close": [ws.close_code, ws.close_reason]}), flush=True)


BOMB_SIZE = 256 << 20


def bomb():
    """permessage-deflate's payload of BOMB_SIZE zeros: about 256 KiB on the wire."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    out = b"".join(compressor.compress(chunk) for _ in range(BOMB_SIZE >> 20))
    out += compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def frame(opcode, payload, rsv1=False, mask=False):
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    mask_bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask(payload, key)
    return head + key + masked


def _mask(payload, key):
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


async def read_frame(reader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    key = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n)
    if key:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


async def run_bomb_server(args):
    payload = bomb()

    async def handle(reader, writer):
        try:
            _, fields = await read_head(reader)
            accept = base64.b64encode(hashlib.sha1((fields["sec-websocket-key"] +
                                      "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            answer = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n")
            if "permessage-deflate" in fields.get("sec-websocket-extensions", ""):
                answer += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
            writer.write((answer + "\r\n").encode())
            writer.write(frame(2, payload, rsv1=True))
            await writer.drain()
            while True:
                opcode, _ = await read_frame(reader)
                if opcode == 8:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


async def run_bomb_client(args):
    payload = bomb()
    proxy = args.proxy.split("://", 1)[1]
    host, port = proxy.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    target = args.url.replace("ws://", "http://", 1)
    authority = target.split("/")[2]
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n").encode())
    status, fields = await read_head(reader)
    assert " 101 " in status and "permessage-deflate" in fields.get("sec-websocket-extensions", ""), (status, fields)
    writer.write(frame(2, payload, rsv1=True, mask=True))
    await writer.drain()
    code = None
    try:
        while True:
            opcode, data = await asyncio.wait_for(read_frame(reader), 20)
            if opcode == 8:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    print(json.dumps({"close": code}), flush=True)


async def run_flood_server(args):
    blob = os.urandom(1 << 20)

    async def flood(ws):
        try:
            for _ in range(100):
                await ws.send(blob)
            await ws.close(1000, "flooded")
        except websockets.ConnectionClosed:
            pass

    async with serve(flood, "127.0.0.1", 0, compression=None, max_size=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


async def run_slow_client(args):
    count = total = 0
    async with connect(args.url, proxy=args.proxy, compression=None, max_size=None, max_queue=1) as ws:
        try:
            while True:
                message = await ws.recv()
                count += 1
                total += len(message)
                # A slow reader: the proxy has to hold back, not buffer.
                await asyncio.sleep(0.005)
        except websockets.ConnectionClosed:
            pass
    print(json.dumps({"messages": count, "bytes": total}), flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server")
    server.add_argument("--tls", nargs=2)
    server.add_argument("--compression", default="deflate")
    client = sub.add_parser("client")
    client.add_argument("url")
    client.add_argument("--proxy")
    client.add_argument("--ca")
    client.add_argument("--compression", default="deflate")
    converse = sub.add_parser("converse")
    converse.add_argument("url")
    converse.add_argument("--proxy")
    converse.add_argument("--expect", type=int, required=True)
    converse.add_argument("--send", action="append", default=[])
    for role in ("bomb-server", "flood-server", "echo"):
        sub.add_parser(role)
    for role in ("bomb-client", "slow-client", "autobahn-client"):
        peer = sub.add_parser(role)
        peer.add_argument("url")
        peer.add_argument("--proxy", required=role != "autobahn-client")
    args = parser.parse_args()
    run = {"server": run_server, "client": run_client, "converse": run_converse, "bomb-server": run_bomb_server,
           "bomb-client": run_bomb_client, "echo": run_echo,
           "autobahn-client": run_autobahn_client, "flood-server": run_flood_server, "slow-client": run_slow_client}[args.role]
    asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
