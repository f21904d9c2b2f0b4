"""WebSocket peers for the e2e tests, on the `websockets` package (tests/e2e/requirements.txt).

  ws.py server [--tls CERT KEY] [--compression deflate|none]
      An echo server on 127.0.0.1: prints its port, then echoes every message. Asked
      "extensions?" it answers with what it negotiated and the offer it got; asked "close
      please" it closes with 4002 "server bye".
  ws.py client URL [--proxy URL] [--ca PEM] [--compression deflate|none]
      Drives the server through flowgate and prints one JSON line of what it saw: text,
      1 MiB of binary, a fragmented message, a ping, a close with 4000 "bye" from the
      client, then a second connection the server closes.
  ws.py converse URL [--proxy URL] --expect N [--send TEXT]...
      Sends each TEXT, reads until N messages came (or 20 s, or the close), and prints
      {"received": [...], "close": [code, reason]}.
"""

import argparse
import asyncio
import json
import os
import ssl
import sys

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


def compression(name):
    return None if name == "none" else "deflate"


async def run_server(args):
    async def echo(ws):
        try:
            async for message in ws:
                if message == "extensions?":
                    offer = ws.request.headers.get("Sec-WebSocket-Extensions", "")
                    names = [e.name for e in ws.protocol.extensions]
                    await ws.send(json.dumps({"offer": offer, "negotiated": names}))
                elif message == "close please":
                    await ws.close(4002, "server bye")
                else:
                    await ws.send(message)
        except websockets.ConnectionClosed:
            pass

    context = None
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls[0], args.tls[1])
    async with serve(echo, "127.0.0.1", 0, ssl=context, compression=compression(args.compression),
                     max_size=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


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
    args = parser.parse_args()
    run = {"server": run_server, "client": run_client, "converse": run_converse}[args.role]
    asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
