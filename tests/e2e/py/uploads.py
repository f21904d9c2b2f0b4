"""Many large uploads at once through a proxy, to an origin of this script's own.

usage: uploads.py PROXY_PORT COUNT SIZE

Runs an HTTP/1.1 origin on loopback that reads each request body whole and answers 200
with the number of bytes it got. Then opens COUNT connections to the proxy at once, each
sending `POST http://127.0.0.1:ORIGIN/upload/N` with a SIZE-byte body (Content-Length),
written in 256 KiB pieces while the response is read, so a proxy that answers before the
body is sent (503) is heard at once. Prints one JSON object: how many got each status,
how many bytes the origin received for complete uploads, and failures without a status.
"""

import asyncio
import json
import sys
from collections import Counter

PROXY_PORT = int(sys.argv[1])
COUNT = int(sys.argv[2])
SIZE = int(sys.argv[3])
PIECE = b"u" * (256 << 10)


async def origin(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            got = 0
            while got < length:
                chunk = await reader.read(min(1 << 20, length - got))
                if not chunk:
                    return
                got += len(chunk)
            body = str(got).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def upload(n, origin_port, statuses, received, errors):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", PROXY_PORT)
    except OSError as e:
        errors.append(f"connect: {e}")
        return
    head = (
        f"POST http://127.0.0.1:{origin_port}/upload/{n} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{origin_port}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {SIZE}\r\n\r\n"
    ).encode()

    async def send():
        writer.write(head)
        left = SIZE
        while left > 0:
            piece = PIECE[: min(len(PIECE), left)]
            writer.write(piece)
            left -= len(piece)
            await writer.drain()

    sending = asyncio.ensure_future(send())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 120)
        parts = status_line.split()
        if len(parts) < 2:
            errors.append(f"no status: {status_line!r}")
            return
        status = int(parts[1])
        statuses[status] += 1
        length = 0
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await reader.readexactly(length)
        if status == 200:
            received.append(int(body))
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        sending.cancel()
        try:
            await sending
        except (asyncio.CancelledError, ConnectionError):
            pass
        writer.close()


async def main():
    server = await asyncio.start_server(origin, "127.0.0.1", 0)
    origin_port = server.sockets[0].getsockname()[1]
    statuses, received, errors = Counter(), [], []
    await asyncio.gather(*(upload(n, origin_port, statuses, received, errors) for n in range(COUNT)))
    server.close()
    print(json.dumps({
        "statuses": {str(k): v for k, v in statuses.items()},
        "complete": sum(1 for r in received if r == SIZE),
        "errors": errors[:10],
        "error_count": len(errors),
    }))


asyncio.run(main())
