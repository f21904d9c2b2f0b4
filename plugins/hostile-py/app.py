"""hostile-py: a deliberately hostile plugin, to prove that flowgate's sandbox contains it.

In request_headers it misbehaves as config `behaviour` says:

  loop     (default) never returns: an endless loop. The host's hook timeout
           (hook_timeout_ms in plugin.toml) must interrupt it.
  memory   allocates without bound, keeping every block reachable from a global, until
           the allocation fails. The memory limit (limits.memory) must stop it.
  trap     raises an uncaught exception.
  connect  tries a TCP connection to 127.0.0.1:<port> (config `port`, default 8080) with
           socket.create_connection. A plugin has no network but the host's outbound-http,
           so this should raise: the request then gets `x-connect-error: <exception class>`
           and goes on. Should it ever succeed, the request gets `x-connect: succeeded`.
  other    (any other value) behaves: the flow continues.

With failure = "fail-open" loop, memory and trap must end with the flow going on upstream
as if the plugin were not there, and with the proxy still serving.
"""

import socket

# socket.getaddrinfo encodes host names with the "idna" codec; componentize-py bundles only
# the modules the app imports, so without this import create_connection fails with
# LookupError("unknown encoding: idna") before it ever reaches the sandbox's socket layer.
import encodings.idna  # noqa: F401

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, log, types

CONTINUE = types.Verdict_Continue()

# Kept reachable forever, so the garbage collector cannot help.
hoard = []


def say(message: str) -> None:
    log.log(log.Level.INFO, message)


def try_connect(request) -> None:
    port = int(config.get("port") or "8080")
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
    except BaseException as e:  # whatever the sandbox throws, report it by name
        say(f"hostile-py: connect to 127.0.0.1:{port} failed: {type(e).__name__}: {e}")
        header, value = "x-connect-error", type(e).__name__
    else:
        sock.close()
        say(f"hostile-py: connect to 127.0.0.1:{port} SUCCEEDED")
        header, value = "x-connect", "succeeded"
    try:
        request.set_header(header, value)
    except Err as e:
        log.log(log.Level.ERROR, f"cannot set {header}: {e.value}")


class Http(exports.Http):
    def request_headers(self, flow, request):
        behaviour = (config.get("behaviour") or "loop").strip()
        if behaviour == "loop":
            say("hostile-py: looping forever")
            spins = 0
            while True:
                spins += 1
        elif behaviour == "memory":
            say("hostile-py: allocating until something gives")
            while True:
                # 4 MiB per block; bytearray zero-fills, so the pages are really used.
                hoard.append(bytearray(4 << 20))
        elif behaviour == "trap":
            raise RuntimeError("hostile-py: deliberate uncaught exception")
        elif behaviour == "connect":
            try_connect(request)
        return CONTINUE

    def request_body_chunk(self, flow, request, chunk, end_of_stream):
        return chunk

    def request(self, flow, request):
        return CONTINUE

    def response_headers(self, flow, request, response):
        return CONTINUE

    def response_body_chunk(self, flow, request, response, chunk, end_of_stream):
        return chunk

    def response(self, flow, request, response):
        return CONTINUE

    def error(self, flow, request, message):
        pass

    def http_connect(self, flow, request):
        return CONTINUE
