"""WebSocket over HTTP/2 (RFC 8441) with the `h2` package, raw frames: what a browser
does when the server allows extended CONNECT.

  h2ws.py client HOST PORT PATH
      Connects with HTTP/2 prior knowledge, waits for SETTINGS_ENABLE_CONNECT_PROTOCOL,
      opens a WebSocket with extended CONNECT, sends "hello over h2" and a close (1000),
      and prints {"status": ..., "echo": ..., "close": code}.
  h2ws.py server CERT KEY [STATUS]
      An HTTP/2-only TLS server (ALPN h2) that allows extended CONNECT, accepts it with
      STATUS (default 200; RFC 8441 takes any 2xx) and echoes the WebSocket messages of
      each stream; prints its port.
"""

import asyncio
import json
import ssl
import struct
import sys

import h2.config
import h2.connection
import h2.events
import h2.settings

from ws import frame  # beside this script

CONNECT_PROTOCOL = h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL


def frames(buf):
    """Whole frames at the front of buf: [(opcode, payload)], rest."""
    out = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        at = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = struct.unpack("!Q", buf[2:10])[0], 10
        key = None
        if buf[1] & 0x80:
            key, at = buf[at:at + 4], at + 4
        if len(buf) < at + n:
            break
        payload = buf[at:at + n]
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        out.append((buf[0] & 0x0F, payload))
        buf = buf[at + n:]
    return out, buf


async def run_client(host, port, path):
    reader, writer = await asyncio.open_connection(host, port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    report = {"status": None, "echo": None, "close": None}
    enabled = False
    stream = None
    buf = b""
    while True:
        data = await asyncio.wait_for(reader.read(65536), 20)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                setting = event.changed_settings.get(CONNECT_PROTOCOL)
                enabled = enabled or (setting is not None and setting.new_value == 1)
            elif isinstance(event, h2.events.ResponseReceived):
                report["status"] = int(dict(event.headers)[b":status"])
                conn.send_data(stream, frame(1, b"hello over h2", mask=True))
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                got, buf = frames(buf + event.data)
                for opcode, payload in got:
                    if opcode == 1:
                        report["echo"] = payload.decode()
                        conn.send_data(stream, frame(8, struct.pack("!H", 1000), mask=True))
                    elif opcode == 8:
                        report["close"] = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                stream = None
        if enabled and stream is None and report["status"] is None:
            stream = conn.get_next_available_stream_id()
            conn.send_headers(stream, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                       (":path", path), (":authority", f"{host}:{port}"),
                                       ("sec-websocket-version", "13")])
        writer.write(conn.data_to_send())
        if report["close"] is not None:
            break
    print(json.dumps(report), flush=True)


async def run_server(cert, key, status):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])

    async def handle(reader, writer):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        conn.update_settings({CONNECT_PROTOCOL: 1})
        writer.write(conn.data_to_send())
        buffers = {}
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = dict(event.headers)
                        ok = headers.get(b":method") == b"CONNECT" and headers.get(b":protocol") == b"websocket"
                        conn.send_headers(event.stream_id, [(":status", status if ok else "400")], end_stream=not ok)
                        buffers[event.stream_id] = b""
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        got, buffers[event.stream_id] = frames(buffers[event.stream_id] + event.data)
                        for opcode, payload in got:
                            if opcode in (1, 2):
                                conn.send_data(event.stream_id, frame(opcode, payload, mask=False))
                            elif opcode == 8:
                                conn.send_data(event.stream_id, frame(8, payload, mask=False), end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main():
    if sys.argv[1] == "client":
        asyncio.run(run_client(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    else:
        asyncio.run(run_server(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "200"))


if __name__ == "__main__":
    main()
