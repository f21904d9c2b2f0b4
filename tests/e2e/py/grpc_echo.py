"""gRPC echo server and client for the flowgate e2e tests (service flowgate.test.Echo, raw-bytes messages, no protobuf).

  grpc_echo.py server [--port 0]      serve on 127.0.0.1 (h2c); prints "listening PORT", runs until SIGTERM
  grpc_echo.py client --target HOST:PORT [--proxy http://HOST:PORT] [--unary-only]
                                      runs Say, Chat (5 lock-step messages) and Fail; prints one JSON object
                                      (--unary-only: Say and Fail, for proxies that buffer bodies)
Methods: Say (unary, replies b"echo:"+request, trailer x-echo-trailer: done), Chat (bidi, one
b"echo:"+msg per message, trailer x-echo-trailer: chat-done), Fail (PERMISSION_DENIED "denied by test").
"""

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "flowgate.test.Echo"
RPC_TIMEOUT = 10


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Server

def say(request, context):
    context.set_trailing_metadata((("x-echo-trailer", "done"),))
    return b"echo:" + request


def chat(request_iterator, context):
    context.set_trailing_metadata((("x-echo-trailer", "chat-done"),))
    for message in request_iterator:
        yield b"echo:" + message


def fail(request, context):
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by test")


def serve(args):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {  # no (de)serializers: messages are raw bytes
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    print(f"listening {port}", flush=True)
    while not stopped.wait(1):
        pass
    server.stop(grace=1).wait(3)


# ---------------------------------------------------------------------------------------
# Client

def run_client(args, result):
    for var in ("no_proxy", "NO_PROXY", "no_grpc_proxy"):  # 127.0.0.1 must not bypass --proxy
        os.environ.pop(var, None)
    if args.proxy:
        options = [("grpc.enable_http_proxy", 1), ("grpc.http_proxy", args.proxy)]
    else:
        options = [("grpc.enable_http_proxy", 0)]  # ignore http_proxy/grpc_proxy from the environment
    errors = []
    with grpc.insecure_channel(args.target, options=options) as channel:
        say_rpc = channel.unary_unary(f"/{SERVICE}/Say")
        chat_rpc = channel.stream_stream(f"/{SERVICE}/Chat")
        fail_rpc = channel.unary_unary(f"/{SERVICE}/Fail")

        try:
            reply, call = say_rpc.with_call(b"hello", timeout=RPC_TIMEOUT)
            result["unary"] = reply.decode()
            result["unary_trailer"] = dict(call.trailing_metadata() or ()).get("x-echo-trailer")
        except grpc.RpcError as e:
            errors.append(f"Say: {e.code().name}: {e.details()}")

        # Chat in lock-step: message n+1 is only sent after the echo of message n came back,
        # so this only completes if messages stream through rather than being buffered.
        if not args.unary_only:
            run_chat(chat_rpc, result, errors)

        try:
            fail_rpc(b"x", timeout=RPC_TIMEOUT)
            errors.append("Fail: unexpectedly succeeded")
        except grpc.RpcError as e:
            result["fail_code"] = e.code().name
            result["fail_details"] = e.details()
    result["error"] = "; ".join(errors) or None


def run_chat(chat_rpc, result, errors):
    """Chat in lock-step: message n+1 is only sent after the echo of message n came back."""
    outbox = queue.Queue()
    call = chat_rpc(iter(outbox.get, None), timeout=RPC_TIMEOUT)
    try:
        for n in range(1, 6):
            sent = time.monotonic()
            outbox.put(f"msg{n}".encode())
            result["chat"].append(next(call).decode())
            result["chat_rtt_ms"].append(round((time.monotonic() - sent) * 1000, 1))
        outbox.put(None)
        extra = [m.decode() for m in call]
        if extra:
            errors.append(f"Chat: unexpected extra replies {extra}")
        result["chat_trailer"] = dict(call.trailing_metadata() or ()).get("x-echo-trailer")
    except grpc.RpcError as e:
        errors.append(f"Chat: {e.code().name}: {e.details()}")
    except StopIteration:
        errors.append("Chat: stream ended early")
    finally:
        outbox.put(None)
        call.cancel()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server", help="run the echo server")
    s.add_argument("--port", type=int, default=0)
    c = sub.add_parser("client", help="run the client calls and print JSON")
    c.add_argument("--target", required=True, help="HOST:PORT of the server")
    c.add_argument("--proxy", help="http://HOST:PORT proxy reached with CONNECT")
    c.add_argument("--unary-only", action="store_true", help="skip the streaming Chat call")
    args = p.parse_args()

    if args.mode == "server":
        serve(args)
        return
    result = {"unary": None, "unary_trailer": None, "chat": [], "chat_trailer": None, "chat_rtt_ms": [],
              "fail_code": None, "fail_details": None, "error": None}
    try:
        run_client(args, result)
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
