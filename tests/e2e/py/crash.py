"""A recording flowgate ended under load: by kill -9 ten times (fixed seeds), then by SIGTERM.

Eight client threads send requests through `flowgate -w FILE` on keep-alive connections
to a local origin and count the responses they received whole. When the count reaches a
point chosen by the seed, flowgate is killed. Then `flowgate -n -r FILE` must read the file
(a torn last record is skipped, never an error), and:
- after kill -9: the file holds every flow the clients had finished, but at most the
  flows in flight (one per client) fewer, and those whose records were still on their
  way to the file (handed to the writer thread after the client had its response; under
  a loaded machine's scheduling, up to about one more per client);
- after SIGTERM: flowgate drains what is in flight, so the file holds every flow that
  finished, and exits 0.

Usage: crash.py FLOWGATE CONFDIR SCRATCH. Prints one JSON line of figures; exits 1 with the
reason on the first failure.
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

FLOWGATE, CONFDIR, SCRATCH = sys.argv[1], sys.argv[2], sys.argv[3]
CLIENTS = 8


def fail(why):
    print(f"crash.py: {why}", file=sys.stderr)
    sys.exit(1)


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Quiet(http.server.ThreadingHTTPServer):
    """An origin whose connections die with the proxy: not an error worth a traceback."""

    def handle_error(self, request, client_address):
        pass


class Load:
    """CLIENTS threads sending requests through the proxy until their connection dies."""

    def __init__(self, proxy_port, origin_port, kill_at):
        self.done = 0
        self.started = 0
        self.lock = threading.Lock()
        self.reached = threading.Event()
        self.kill_at = kill_at
        self.threads = [threading.Thread(target=self.client, args=(proxy_port, origin_port, n)) for n in range(CLIENTS)]
        for t in self.threads:
            t.start()

    def client(self, proxy_port, origin_port, n):
        conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
        i = 0
        while True:
            body = f"client {n} request {i} ".encode() * 20
            with self.lock:
                self.started += 1
            try:
                conn.request("POST", f"http://127.0.0.1:{origin_port}/c{n}/{i}", body)
                reply = conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                return
            if reply != body:
                return
            with self.lock:
                self.done += 1
                if self.done >= self.kill_at:
                    self.reached.set()
            i += 1

    def join(self):
        for t in self.threads:
            t.join()


def start(recording):
    child = subprocess.Popen(
        [FLOWGATE, "--confdir", CONFDIR, "--listen-host", "127.0.0.1", "-p", "0", "-q", "-w", recording],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in child.stdout:
        if "listening at 127.0.0.1:" in line:
            return child, int(line.rsplit(":", 1)[1])
    fail(f"flowgate did not start: {child.stderr.read()}")


def read_back(recording):
    out = subprocess.run([FLOWGATE, "--confdir", CONFDIR, "-n", "-r", recording],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        fail(f"flowgate -n -r {recording} failed ({out.returncode}): {out.stderr}")
    return [line for line in out.stdout.splitlines() if " POST " in line and "<< 200" in line]


def main():
    os.makedirs(SCRATCH, exist_ok=True)
    origin = Quiet(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    origin_port = origin.server_address[1]
    figures = {"kill9": []}
    for seed in range(10):
        recording = os.path.join(SCRATCH, f"kill9-{seed}.fg")
        child, port = start(recording)
        load = Load(port, origin_port, random.Random(seed).randrange(50, 600))
        if not load.reached.wait(60):
            fail(f"seed {seed}: the load never reached {load.kill_at} responses ({load.done})")
        with load.lock:
            finished = load.done
        child.kill()
        child.wait()
        load.join()
        saved = len(read_back(recording))
        if saved < finished - 2 * CLIENTS or saved > load.started:
            fail(f"seed {seed}: {finished} flows had finished at the kill, {load.started} started; the file holds {saved}")
        figures["kill9"].append({"finished": finished, "saved": saved})

    recording = os.path.join(SCRATCH, "sigterm.fg")
    child, port = start(recording)
    load = Load(port, origin_port, 300)
    if not load.reached.wait(60):
        fail("SIGTERM: the load never reached 300 responses")
    child.send_signal(signal.SIGTERM)
    load.join()
    try:
        child.wait(30)
    except subprocess.TimeoutExpired:
        child.kill()
        fail("flowgate did not exit on SIGTERM")
    if child.returncode != 0:
        fail(f"flowgate exited with {child.returncode} on SIGTERM: {child.stderr.read()}")
    saved = len(read_back(recording))
    if saved < load.done or saved > load.started:
        fail(f"SIGTERM: {load.done} flows finished, {load.started} started; the file holds {saved}")
    figures["sigterm"] = {"finished": load.done, "saved": saved}
    print(json.dumps(figures))


main()
