"""Client and server replay of a 1,000-flow recording, through the real flowgate binary.

1. An origin (http.server) logs every request as it arrives (method, target, header
   fields in order and case, body) and answers each with a body of its own.
2. flowgate -w records 1,000 varied requests sent through it by http.client (methods,
   queries, duplicate and mixed-case fields, binary bodies, a request repeated with
   different answers).
3. flowgate -n -C replays the file: the origin sees the same 1,000 requests, in order;
   again with client_replay_concurrency=8: the same requests, in any order.
4. The origin stops; flowgate -S answers the same 1,000 requests from the file with
   byte-identical bodies (the repeated request gets its answers in the recorded order),
   a request the file does not hold gets server_replay_extra's 404, and flowgate exits
   by itself once every saved response was served.

Usage: replay.py FLOWGATE CONFDIR SCRATCH. Prints one JSON line of figures; exits 1 with
the reason on the first difference.
"""

import http.client
import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

FLOWGATE, CONFDIR, SCRATCH = sys.argv[1], sys.argv[2], sys.argv[3]
N = 1000
arrivals = []
arrivals_lock = threading.Lock()


def fail(why):
    print(f"replay.py: {why}", file=sys.stderr)
    sys.exit(1)


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go in two writes: without this, Nagle holds the body for the
    # client's delayed ACK (40 ms a request).
    disable_nagle_algorithm = True
    served = 0

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with arrivals_lock:
            arrivals.append((self.command, self.path, list(self.headers.items()), body))
            Origin.served += 1
            n = Origin.served
        rng = random.Random(n)
        out = f"answer {n} to {self.command} {self.path}\n".encode() + bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        self.send_response(200 if n % 7 else 201)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Date", self.date_time_string())
        self.send_header("Set-Cookie", f"n={n}; Path=/; Expires=Wed, 21 Oct 2037 07:28:00 GMT")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = answer

    def log_message(self, *args):
        pass


def requests(port):
    """The 1,000 requests: (method, target, fields, body), the same list every time."""
    rng = random.Random(1234)
    out = []
    for i in range(N):
        if i % 50 == 25:
            out.append(("GET", f"http://127.0.0.1:{port}/same?q=a+b", [("X-Same", "1")], None))
            continue
        method = rng.choice(["GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
        path = f"/item/{i}/{rng.choice(['a', 'b%20c', 'd.json'])}"
        if rng.random() < 0.5:
            path += f"?id={i}&tag={rng.choice(['x', 'y+z', '%2F'])}&empty="
        fields = [("X-Req", str(i)), ("X-Mixed-Case", rng.choice(["One", "two"])), ("x-dup", "1"), ("X-Dup", "2")]
        body = None
        if method in ("POST", "PUT", "PATCH"):
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(2000)))
            fields.append(("Content-Type", rng.choice(["application/octet-stream", "text/plain"])))
        out.append((method, f"http://127.0.0.1:{port}{path}", fields, body))
    return out


def send_all(proxy_port, reqs):
    """Sends every request through the proxy on one keep-alive connection; the replies."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
    replies = []
    for method, target, fields, body in reqs:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in fields:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        replies.append((response.status, response.read()))
    conn.close()
    return replies


class Proxy:
    """flowgate running as a proxy, its port read from its first lines."""

    def __init__(self, *args):
        self.child = subprocess.Popen(
            [FLOWGATE, "--confdir", CONFDIR, "--listen-host", "127.0.0.1", "-p", "0", "-q", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in self.child.stdout:
            if "listening at 127.0.0.1:" in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
        else:
            fail(f"flowgate {args} did not start: {self.child.stderr.read()}")

    def wait(self, timeout):
        try:
            self.child.wait(timeout)
        except subprocess.TimeoutExpired:
            self.child.kill()
            fail(f"flowgate did not exit within {timeout}s")
        stderr = self.child.stderr.read()
        if self.child.returncode != 0:
            fail(f"flowgate exited with {self.child.returncode}: {stderr}")
        return stderr


def replay_client(recording, *sets):
    with arrivals_lock:
        arrivals.clear()
    args = [FLOWGATE, "--confdir", CONFDIR, "-n", "-C", recording]
    for s in sets:
        args += ["--set", s]
    started = time.monotonic()
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - started
    if done.returncode != 0:
        fail(f"flowgate -n -C failed ({done.returncode}): {done.stderr}")
    lines = done.stdout.splitlines()
    if len(lines) != N or not all(line.startswith("[replay] ") for line in lines):
        fail(f"expected {N} [replay] lines, got {len(lines)}: {lines[:3]}")
    if f"client replay: {N} flows, {N} answered, 0 failed" not in done.stderr:
        fail(f"no summary in {done.stderr!r}")
    with arrivals_lock:
        return list(arrivals), took


def main():
    os.makedirs(SCRATCH, exist_ok=True)
    recording = os.path.join(SCRATCH, "replay.fg")
    origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    reqs = requests(origin.server_address[1])

    # 2. Record.
    proxy = Proxy("-w", recording)
    recorded_replies = send_all(proxy.port, reqs)
    proxy.child.send_signal(signal.SIGTERM)
    stderr = proxy.wait(30)
    if f"saved {N} flows" not in stderr:
        fail(f"the recording did not save {N} flows: {stderr}")
    with arrivals_lock:
        recorded = list(arrivals)
    if len(recorded) != N:
        fail(f"the origin saw {len(recorded)} requests while recording")

    # 3. Client replay: the same requests arrive, in order; concurrently, in any order.
    replayed, serial_s = replay_client(recording)
    for i, (want, got) in enumerate(zip(recorded, replayed)):
        if want != got:
            fail(f"request {i} arrived differently when replayed:\n recorded {want}\n replayed {got}")
    replayed, concurrent_s = replay_client(recording, "client_replay_concurrency=8")
    if sorted(map(repr, replayed)) != sorted(map(repr, recorded)):
        fail("with client_replay_concurrency=8 the requests that arrived differ from the recording")

    # 4. Server replay with no origin.
    origin.shutdown()
    origin.server_close()
    proxy = Proxy("-S", recording, "--set", "server_replay_extra=404")
    extra = send_all(proxy.port, [("GET", "http://127.0.0.1:9/not-recorded", [], None)])
    if extra[0][0] != 404:
        fail(f"a request the file does not hold got {extra[0][0]}, not server_replay_extra's 404")
    served = send_all(proxy.port, reqs)
    for i, (want, got) in enumerate(zip(recorded_replies, served)):
        if want != got:
            fail(f"request {i} was answered differently by server replay:\n recorded {want}\n replayed {got}")
    stderr = proxy.wait(15)
    if "every saved response was served" not in stderr:
        fail(f"flowgate exited without saying why: {stderr}")
    print(json.dumps({"flows": N, "client_replay_s": round(serial_s, 2),
                      "client_replay_concurrent_s": round(concurrent_s, 2), "server_replay": "ok"}))


main()
