"""flowgate's benchmark harness: flowgate against direct, mitmdump and itself with a plugin,
in one run, with alternating rounds and medians.

Targets: direct (no proxy), flowgate (no plugin), flowgate + a Rust plugin on every HTTP
hook (request-id), mitmdump, and with --hudsucker hudsucker's no-op MITM proxy (a Rust
library; tests/bench/hudsucker) in the explicit-proxy load scenarios and the sweep.
Scenarios: plain HTTP/1 through the explicit proxy, HTTPS via CONNECT with interception
over HTTP/1.1 and over HTTP/2, a new TLS connection per request, a concurrency sweep
(HTTPS via CONNECT, HTTP/1.1, oha -c 1/10/100/500: req/s and p99 of direct, flowgate and
hudsucker), reverse mode, a 1 GiB streamed body (throughput, peak RSS), many idle
intercepted TLS connections (RSS per connection) and a hostile plugin's CPU (spin: the
other flows' throughput and p99 with and without 10 flows making spin-forever spin).
With --valgrind, instructions: what the proxy executes per request (valgrind's callgrind,
HTTPS via CONNECT over HTTP/1.1 and HTTP/2), a count that does not move with the machine's
speed, which swings by 20-50% between rounds here.

The origin is nginx; load comes from oha; both are found on PATH or given by flag
(tests/bench/run.sh installs them). Only the Python standard library is used here.
Prints a table and writes the same numbers as JSON (--out).
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SCHEMA = "flowgate-bench/1"


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def rss_kib(pid, field="VmRSS"):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class RssSampler:
    """The highest VmRSS of a process while the block runs (sampled every 20 ms)."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_kib(self.pid) or 0)
                self._stop.wait(0.02)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid) or 0)


# ---------------------------------------------------------------------------------------
# The origin (nginx) and the proxies.


class Origin:
    """nginx on loopback: HTTP/1.1 cleartext, and TLS with ALPN h2 + http/1.1."""

    def __init__(self, nginx, work, big_size):
        self.dir = work / "origin"
        (self.dir / "www").mkdir(parents=True)
        (self.dir / "www" / "small").write_bytes(b"flowgate benchmark payload\n" * 4)
        # What the flows that make spin-forever spin ask for (the spin scenario).
        (self.dir / "www" / "slow").write_bytes(b"flowgate benchmark payload\n" * 4)
        with open(self.dir / "www" / "big", "wb") as f:
            f.truncate(big_size)  # sparse: no disk needed
        self.big_size = big_size
        # A CA and a leaf it signs (clients that check reject a CA certificate as a leaf).
        self.cert, self.key = self.dir / "origin.crt", self.dir / "origin.key"
        ca_cert, ca_key, ext = self.dir / "ca.crt", self.dir / "ca.key", self.dir / "leaf.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n")
        for cmd in (
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=flowgate bench origin CA",
             "-keyout", ca_key, "-out", ca_cert],
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", self.key,
             "-out", self.dir / "leaf.csr"],
            ["x509", "-req", "-in", self.dir / "leaf.csr", "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-days", "2", "-extfile", ext, "-out", self.cert],
        ):
            subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
        self.ca = ca_cert
        self.http, self.https = free_port(), free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
error_log {self.dir}/error.log crit;
pid {self.dir}/nginx.pid;
events {{ worker_connections 32768; }}
http {{
  access_log off;
  client_body_temp_path {self.dir}/tmp-body;
  proxy_temp_path {self.dir}/tmp-proxy;
  fastcgi_temp_path {self.dir}/tmp-fcgi;
  uwsgi_temp_path {self.dir}/tmp-uwsgi;
  scgi_temp_path {self.dir}/tmp-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  sendfile on;
  server {{
    listen 127.0.0.1:{self.http};
    listen 127.0.0.1:{self.https} ssl http2;
    ssl_certificate {self.cert};
    ssl_certificate_key {self.key};
    root {self.dir}/www;
  }}
}}
""")
        for path in [self.dir, self.dir / "www", *(self.dir / "www").iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.proc = subprocess.Popen([nginx, "-c", str(conf), "-e", str(self.dir / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.http, self.proc)
        wait_port(self.https, self.proc)

    def stop(self):
        stop(self.proc)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Proxy:
    """One proxy process: flowgate or mitmdump, in regular or reverse mode, or hudsucker-noop
    (regular mode only: an explicit proxy intercepting every CONNECT)."""

    def __init__(self, kind, args, work, name, mode="regular", plugins=None, wrap=(), extra=()):
        self.kind, self.name, self.port = kind, name, free_port()
        self.confdir = work / f"conf-{name}"
        self.confdir.mkdir(exist_ok=True)
        if kind == "flowgate":
            binary = args.baseline if name.startswith("baseline") else args.flowgate
            cmd = [binary, "-q", "-k", "--confdir", str(self.confdir), "--listen-host", "127.0.0.1",
                   "-p", str(self.port), "--mode", mode]
            plugin = plugin_of(args, name)
            for p in plugins if plugins is not None else [plugin] if plugin else []:
                cmd += ["-s", p]
            self.ca = self.confdir / "flowgate-ca-cert.pem"
        elif kind == "hudsucker":
            if mode != "regular":
                raise ValueError(f"hudsucker-noop has no {mode} mode")
            # A CA made at start, its certificate written here; upstream certificates unchecked.
            cmd = [args.hudsucker, "--port", str(self.port), "--ca-dir", str(self.confdir)]
            self.ca = self.confdir / "hudsucker-ca-cert.pem"
        else:
            cmd = [args.mitmdump, "-q", "--ssl-insecure", "--listen-host", "127.0.0.1", "-p", str(self.port),
                   "--mode", mode, "--set", f"confdir={self.confdir}",
                   # Without it mitmproxy holds whole bodies in memory.
                   "--set", "stream_large_bodies=1m"]
            self.ca = self.confdir / "mitmproxy-ca-cert.pem"
        cmd = [*wrap, *cmd, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / f"{name}.log", "ab"))
        wait_port(self.port, self.proc, timeout=120 if wrap else 60)
        for _ in range(100):
            if self.ca.exists():
                break
            time.sleep(0.05)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        stop(self.proc)


# ---------------------------------------------------------------------------------------
# Load (oha) and the special scenarios.


def oha(args, url, extra, seconds, connections):
    cmd = [args.oha, "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-c", str(connections), "--disable-compression"]
    cmd += extra + [url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr.strip()[:500]}")
    report = json.loads(out.stdout)
    summary = report["summary"]
    statuses = report.get("statusCodeDistribution", {})
    ok = sum(n for code, n in statuses.items() if str(code).startswith("2"))
    # -z ends the run by aborting what is in flight: not a failure.
    errors = {e: n for e, n in report.get("errorDistribution", {}).items() if e != "aborted due to deadline"}
    total = sum(statuses.values()) + sum(errors.values())
    pct = report.get("latencyPercentiles", {})
    return {
        "rps": summary.get("requestsPerSec") or 0.0,
        "p50_ms": (pct.get("p50") or 0.0) * 1000,
        "p99_ms": (pct.get("p99") or 0.0) * 1000,
        "success_rate": (ok / total) if total else 0.0,
        "errors": errors,
        "statuses": statuses,
    }


def stream_body(url, proxy, seconds_cap):
    cmd = ["curl", "-s", "-S", "-o", "/dev/null", "--max-time", str(seconds_cap), "-w", "%{http_code} %{size_download} %{time_total}"]
    if proxy:
        cmd += ["-x", proxy]
    out = subprocess.run(cmd + [url], capture_output=True, text=True)
    code, size, total = (out.stdout.split() + ["0", "0", "0"])[:3]
    return int(code), int(size), float(total)


async def open_idle_tls(proxy_port, origin_port, cafile, count, concurrency=200):
    """Opens `count` intercepted TLS connections through the proxy (CONNECT, TLS with the
    proxy's CA, one request answered), then keeps them open. Returns (streams, failures)."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = True
    ctx.set_alpn_protocols(["http/1.1"])
    sem = asyncio.Semaphore(concurrency)
    conns, failures = [], 0

    async def one():
        nonlocal failures
        async with sem:
            try:
                if proxy_port:
                    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
                    writer.write(f"CONNECT localhost:{origin_port} HTTP/1.1\r\nHost: localhost:{origin_port}\r\n\r\n".encode())
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                    if b" 200" not in head.split(b"\r\n", 1)[0]:
                        raise RuntimeError(head[:60])
                    await writer.start_tls(ctx, server_hostname="localhost")
                else:
                    reader, writer = await asyncio.open_connection("127.0.0.1", origin_port, ssl=ctx,
                                                                   server_hostname="localhost")
                writer.write(b"GET /small HTTP/1.1\r\nHost: localhost\r\n\r\n")
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                length = next((int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")), 0)
                await asyncio.wait_for(reader.readexactly(length), 30)
                conns.append(writer)
            except Exception as e:  # noqa: BLE001 - counted, reported
                failures += 1
                if failures <= 3:
                    log(f"idle connection failed: {e!r}")

    await asyncio.gather(*(one() for _ in range(count)))
    return conns, failures


def idle_tls(proxy, origin, count):
    async def run():
        base = rss_kib(proxy.proc.pid)
        conns, failures = await open_idle_tls(proxy.port, origin.https, proxy.ca, count)
        await asyncio.sleep(1.0)  # let the proxy settle
        after = rss_kib(proxy.proc.pid)
        for w in conns:
            w.close()
        return base, after, len(conns), failures

    base, after, opened, failures = asyncio.run(run())
    per_conn = (after - base) / opened if opened else None
    return {"connections": opened, "failures": failures, "rss_before_kib": base, "rss_after_kib": after,
            "per_connection_kib": per_conn}


# ---------------------------------------------------------------------------------------


TARGETS = ["direct", "flowgate", "flowgate+plugin", "mitmdump"]
# With --hudsucker: measured in these scenarios only (explicit proxy; no reverse mode, no plugins).
HUDSUCKER_SCENARIOS = ("h1-plain", "h1-https", "h2-https", "new-tls", "sweep")


def load_scenarios(origin):
    small_http = f"http://127.0.0.1:{origin.http}/small"
    small_https = f"https://localhost:{origin.https}/small"
    return [
        # name, description, url per target, extra oha args, connections, needs proxy CA
        ("h1-plain", "plain HTTP/1.1 through the explicit proxy", small_http, [], 10, False),
        ("h1-https", "HTTPS via CONNECT, intercepted, HTTP/1.1", small_https, ["--http-version", "1.1"], 10, True),
        ("h2-https", "HTTPS via CONNECT, intercepted, HTTP/2 (10 connections x 10 streams)", small_https,
         ["--http2", "-p", "10"], 10, True),
        ("new-tls", "a new intercepted TLS connection per request (CONNECT + handshake each)", small_https,
         ["--http-version", "1.1", "--disable-keepalive"], 10, True),
    ]


VARIANTS = ("reverse", "body", "idle", "spin", "instructions")


def plugin_of(args, name):
    """The plugin a flowgate target (or its -reverse/-body/-idle/-instructions variant) loads,
    if any. Only a known variant is cut off: an extra plugin's own name may have a hyphen
    (`flowgate+add-header`)."""
    base, _, variant = name.rpartition("-")
    target = base if base and variant in VARIANTS else name
    if target == "flowgate+plugin":
        return args.plugin
    return dict(args.extra_plugins).get(target.removeprefix("flowgate+")) if target.startswith("flowgate+") else None


def kind_of(target):
    """Which program a target runs (`baseline` is flowgate too, another build of it)."""
    return target if target in ("mitmdump", "hudsucker") else "flowgate"


def measure(args, name, targets, request, seconds=None):
    """Rounds of oha against every target, the order rotating each round; `request(target)`
    gives the URL, oha's extra arguments, the connections and the proxy (None: direct)."""
    seconds = seconds or args.seconds
    runs = {t: [] for t in targets}
    for r in range(args.rounds):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for t in order:
            url, extra, conns, proxy = request(t)
            if proxy is None:
                res = oha(args, url, extra, seconds, conns)
                res["peak_rss_kib"] = None
            else:
                with RssSampler(proxy.proc.pid) as s:
                    res = oha(args, url, extra, seconds, conns)
                res["peak_rss_kib"] = s.peak
            runs[t].append(res)
            log(f"{name} round {r + 1} {t}: {res['rps']:.0f} req/s, p99 {res['p99_ms']:.2f} ms")
    return runs


def run(args):
    work = Path(tempfile.mkdtemp(prefix="flowgate-bench-"))
    work.chmod(0o755)  # nginx's workers run as another user
    log(f"working in {work}")
    big = args.body_size
    origin = Origin(args.nginx, work, big)
    procs = {}
    results = {"schema": SCHEMA, "mode": "quick" if args.quick else "full",
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "settings": {"rounds": args.rounds, "seconds": args.seconds, "body_bytes": big,
                            "idle_connections": args.idle, "idle_connections_mitmdump": args.idle_mitmdump,
                            "sweep_connections": args.sweep, "sweep_seconds": args.sweep_seconds},
               "scenarios": {}}
    try:
        extra_targets = [f"flowgate+{n}" for n, _ in args.extra_plugins]
        # Another flowgate build, measured in the same rotating rounds (before/after).
        extra_targets += ["baseline"] if args.baseline else []
        for t in TARGETS[1:] + extra_targets:
            if t != "mitmdump" or args.mitmdump:
                procs[t] = Proxy(kind_of(t), args, work, t)
        # hudsucker: the explicit-proxy load scenarios and the sweep only (HUDSUCKER_SCENARIOS).
        if args.hudsucker and (not args.only or set(args.only) & set(HUDSUCKER_SCENARIOS)):
            procs["hudsucker"] = Proxy("hudsucker", args, work, "hudsucker")
        # The extra plugins take part in the load scenarios and reverse mode only.
        targets = [t for t in TARGETS if t == "direct" or t in procs]
        load_targets = targets + extra_targets

        def request_via(t, url, extra, conns, tls):
            if t == "direct":
                return url, extra + (["--cacert", str(origin.ca)] if tls else []), conns, None
            p = procs[t]
            return url, extra + ["-x", p.url] + (["--cacert", str(p.ca)] if tls else []), conns, p

        for name, desc, url, extra, conns, tls in load_scenarios(origin):
            if args.only and name not in args.only:
                continue
            def request(t, url=url, extra=extra, conns=conns, tls=tls):
                return request_via(t, url, extra, conns, tls)

            these = load_targets + (["hudsucker"] if "hudsucker" in procs and name in HUDSUCKER_SCENARIOS else [])
            results["scenarios"][name] = summarize(desc, measure(args, name, these, request))

        # The concurrency sweep: HTTPS via CONNECT over HTTP/1.1, oha -c N for each N.
        if args.sweep and (not args.only or "sweep" in args.only):
            sweep_targets = (["direct", "flowgate"] + (["baseline"] if "baseline" in procs else [])
                             + (["hudsucker"] if "hudsucker" in procs else []))
            url = f"https://localhost:{origin.https}/small"
            runs = {}
            for c in args.sweep:
                def request(t, c=c):
                    return request_via(t, url, ["--http-version", "1.1"], c, True)

                point = measure(args, f"sweep -c {c}", sweep_targets, request, seconds=args.sweep_seconds)
                runs.update({f"{t} c={c}": rs for t, rs in point.items()})
            results["scenarios"]["sweep"] = summarize(
                f"HTTPS via CONNECT, intercepted, HTTP/1.1, oha -c {'/'.join(map(str, args.sweep))} "
                f"({args.sweep_seconds:g} s per point and round)", runs)
            results["scenarios"]["sweep"]["connections"] = args.sweep
            results["scenarios"]["sweep"]["sweep_targets"] = sweep_targets
        if "hudsucker" in procs:
            procs.pop("hudsucker").stop()

        # Reverse mode: each proxy in front of the cleartext origin.
        if not args.only or "reverse" in args.only:
            for t in extra_targets:
                procs.pop(t).stop()
            for t in load_targets[1:]:
                procs[f"{t}-reverse"] = Proxy(kind_of(t), args, work, f"{t}-reverse",
                                              mode=f"reverse:http://127.0.0.1:{origin.http}")

            def reverse_request(t):
                p = procs.get(f"{t}-reverse")
                return f"http://127.0.0.1:{p.port if p else origin.http}/small", [], 10, p

            runs = measure(args, "reverse", load_targets, reverse_request)
            results["scenarios"]["reverse"] = summarize("reverse mode, HTTP/1.1 client, cleartext origin", runs)
            for t in load_targets[1:]:
                procs.pop(f"{t}-reverse").stop()
        else:
            for t in extra_targets:
                procs.pop(t).stop()
        if args.spin_plugin and (not args.only or "spin" in args.only):
            spin_targets = ["flowgate"] + (["baseline"] if args.baseline else [])
            results["scenarios"]["spin"] = spin_scenario(args, work, origin, spin_targets)
        if args.valgrind and (not args.only or "instructions" in args.only):
            counted = (["flowgate", "flowgate+plugin"] + [f"flowgate+{n}" for n, _ in args.extra_plugins]
                       + (["baseline"] if args.baseline else []) + (["hudsucker"] if args.hudsucker else []))
            results["scenarios"]["instructions"] = instructions_scenario(args, work, origin, counted)
        if not args.only:
            # A streamed body: a fresh proxy each, so its peak RSS is the body's.
            body = {}
            for t in targets:
                p = None if t == "direct" else Proxy(kind_of(t), args, work, f"{t}-body")
                url = f"http://127.0.0.1:{origin.http}/big"
                code, size, total = stream_body(url, p.url if p else None, args.body_timeout)
                peak = rss_kib(p.proc.pid, "VmHWM") if p else None
                body[t] = {"status": code, "bytes": size, "seconds": total,
                           "mb_per_s": (size / total / 1e6) if total else 0.0, "peak_rss_kib": peak,
                           "complete": code == 200 and size == big}
                log(f"body {t}: {body[t]['mb_per_s']:.0f} MB/s, peak RSS {peak} KiB")
                if p:
                    p.stop()
            results["scenarios"]["body"] = {"description": f"a {big >> 20} MiB body streamed through (curl)",
                                            "targets": body}

            # Idle intercepted TLS connections: RSS per connection.
            idle = {}
            for t in targets[1:]:
                count = args.idle_mitmdump if t == "mitmdump" else args.idle
                p = Proxy(kind_of(t), args, work, f"{t}-idle")
                idle[t] = idle_tls(p, origin, count)
                log(f"idle {t}: {idle[t]}")
                p.stop()
            results["scenarios"]["idle-tls"] = {"description": "idle intercepted TLS connections (after one request each)",
                                                "targets": idle}
    finally:
        for p in procs.values():
            p.stop()
        origin.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["ratios"] = ratios(results)
    return results


def spin_manifest(args, work):
    """spin-forever limited to /slow with a 100 ms deadline, as issue 12 measured it: a crash
    budget high enough that no breaker opens on a build that counts deadlines as crashes, and
    every other limit (the CPU budget among them) at its default. Only keys every build knows."""
    path = work / "spin.toml"
    path.write_text(f'name = "spin"\nwasm = "{Path(args.spin_plugin).resolve()}"\n'
                    '[limits]\nhook_timeout_ms = 100\ncrash_budget = 1000000\n[config]\npath = "/slow"\n')
    return str(path)


def spin_scenario(args, work, origin, targets):
    """Other flows' throughput and p99 through a proxy whose plugin spins on /slow: oha on
    /small alone (quiet), then the same while another oha keeps 10 /slow flows going (spinning).
    Rounds alternate the targets; each round measures quiet then spinning."""
    manifest = spin_manifest(args, work)
    procs = {t: Proxy("flowgate", args, work, f"{t}-spin", mode=f"reverse:http://127.0.0.1:{origin.http}",
                      plugins=[manifest]) for t in targets}
    runs = {f"{t} {phase}": [] for t in targets for phase in ("quiet", "spinning")}
    attack = {t: [] for t in targets}
    try:
        for r in range(args.rounds):
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for t in order:
                p = procs[t]
                small, slow = f"http://127.0.0.1:{p.port}/small", f"http://127.0.0.1:{p.port}/slow"
                res = oha(args, small, [], args.seconds, 10)
                res["peak_rss_kib"] = None
                runs[f"{t} quiet"].append(res)
                log(f"spin round {r + 1} {t} quiet: {res['rps']:.0f} req/s, p99 {res['p99_ms']:.2f} ms")
                rate = ["-q", str(args.spin_rate)] if args.spin_rate else []
                attacker = subprocess.Popen(
                    [args.oha, "--no-tui", "--output-format", "json", "-z", f"{args.seconds + 1.5}s", "-c", "10",
                     "--disable-compression", *rate, slow],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                time.sleep(0.5)  # the spinning flows are under way before the measurement starts
                with RssSampler(p.proc.pid) as s:
                    res = oha(args, small, [], args.seconds, 10)
                res["peak_rss_kib"] = s.peak
                out, _ = attacker.communicate(timeout=args.seconds + 60)
                try:
                    attack[t].append(json.loads(out)["summary"].get("requestsPerSec") or 0.0)
                except (ValueError, KeyError):
                    attack[t].append(None)
                runs[f"{t} spinning"].append(res)
                log(f"spin round {r + 1} {t} spinning: {res['rps']:.0f} req/s, p99 {res['p99_ms']:.2f} ms "
                    f"(the /slow flows: {attack[t][-1] or 0:.0f} req/s)")
    finally:
        for p in procs.values():
            p.stop()
    offered = f"at most {args.spin_rate} req/s" if args.spin_rate else "as fast as they are answered"
    out = summarize("other flows (oha -c 10 on /small, reverse mode) with spin-forever on /slow (100 ms deadline), "
                    f"quiet and with 10 concurrent /slow flows ({offered})", runs)
    out["slow_flows_rate_limit"] = args.spin_rate or None
    out["spin"] = {}
    for t in targets:
        quiet, spinning = out["targets"][f"{t} quiet"], out["targets"][f"{t} spinning"]
        done = [a for a in attack[t] if a is not None]
        out["spin"][t] = {
            "rps_kept": spinning["rps"] / quiet["rps"] if quiet["rps"] else None,
            "p99_factor": spinning["p99_ms"] / quiet["p99_ms"] if quiet["p99_ms"] else None,
            "slow_flows_rps": statistics.median(done) if done else None,
        }
    return out


def instructions_scenario(args, work, origin, targets):
    """Instructions the proxy executes per request: each target runs under callgrind; after
    a warm-up its counters are zeroed, oha sends `--instructions-requests` requests over 2
    connections (HTTP/2: one stream each), and the count is dumped. Counts only what the
    proxy's process executes (not oha, nginx or the kernel), the same on a busy machine as
    on an idle one."""
    control = shutil.which("callgrind_control", path=str(Path(args.valgrind).parent)) or "callgrind_control"
    n = args.instructions_requests
    url = f"https://localhost:{origin.https}/small"
    protocols = {"h1-https": ["--http-version", "1.1"], "h2-https": ["--http2", "-p", "1"]}
    out = {}
    for t in targets:
        dump = work / f"callgrind-{t}.out"
        wrap = [args.valgrind, "--tool=callgrind", "--smc-check=all-non-file", f"--callgrind-out-file={dump}"]
        # Each wasm memory reserves its 4 GiB of address space; valgrind allows less.
        extra = ["--set", "plugin_max_instances=4"] if kind_of(t) == "flowgate" else []
        p = Proxy(kind_of(t), args, work, f"{t}-instructions", wrap=wrap, extra=extra)
        try:
            for proto, flags in protocols.items():
                oha_args = [args.oha, "--no-tui", "--output-format", "json", "--disable-compression", "-c", "2",
                            "-x", p.url, "--cacert", str(p.ca), *flags, url]
                subprocess.run(oha_args[:1] + ["-n", "50"] + oha_args[1:], capture_output=True, timeout=300, check=True)
                subprocess.run([control, "-z", str(p.proc.pid)], capture_output=True, timeout=60, check=True)
                res = subprocess.run(oha_args[:1] + ["-n", str(n)] + oha_args[1:], capture_output=True, text=True,
                                     timeout=600, check=True)
                before = set(work.glob(f"callgrind-{t}.out.*"))
                subprocess.run([control, "-d", str(p.proc.pid)], capture_output=True, timeout=60, check=True)
                made = sorted(set(work.glob(f"callgrind-{t}.out.*")) - before, key=lambda f: f.stat().st_mtime)
                total = next(int(line.split()[1]) for line in made[-1].read_text().splitlines()
                             if line.startswith("totals:"))
                statuses = json.loads(res.stdout).get("statusCodeDistribution", {})
                ok = sum(c for code, c in statuses.items() if str(code).startswith("2"))
                out[f"{t} {proto}"] = {"per_request": total / n, "requests": n, "success_rate": ok / n}
                log(f"instructions {t} {proto}: {total / n:,.0f} per request ({ok}/{n} ok)")
        finally:
            p.stop()
    return {"description": f"instructions the proxy executes per request (callgrind; {n} requests, oha -c 2, "
                           "HTTPS via CONNECT, HTTP/1.1 and HTTP/2 with one stream per connection)",
            "protocols": list(protocols), "targets": out}


def summarize(desc, runs):
    out = {"description": desc, "targets": {}}
    for t, rs in runs.items():
        if not rs:
            continue
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        peaks = [r["peak_rss_kib"] for r in rs if r["peak_rss_kib"] is not None]
        out["targets"][t] = {
            "rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
            "success_rate": min(r["success_rate"] for r in rs),
            "peak_rss_kib": max(peaks) if peaks else None,
            "runs": [round(r["rps"], 1) for r in rs],
            "statuses": merge(r["statuses"] for r in rs),
            "errors": merge(r["errors"] for r in rs),
        }
    return out


def merge(counts):
    total = {}
    for c in counts:
        for k, n in c.items():
            total[k] = total.get(k, 0) + n
    return total


def ratios(results):
    """Throughput ratios per scenario (the sweep: one row per connection count, `sweep c=N`)."""
    out = {}
    for name, sc in results["scenarios"].items():
        if name in ("idle-tls", "spin", "instructions"):
            continue
        key = "rps" if name not in ("body",) else "mb_per_s"
        if name == "sweep":
            for c in sc.get("connections", []):
                suffix = f" c={c}"
                t = {k.removesuffix(suffix): v for k, v in sc["targets"].items() if k.endswith(suffix)}
                out[f"sweep c={c}"] = target_ratios(t, key)
        else:
            out[name] = target_ratios(sc["targets"], key)
    return out


def target_ratios(t, key):
    def ratio(a, b):
        if a in t and b in t and t[b].get(key):
            return t[a][key] / t[b][key]
        return None

    out = {"flowgate/direct": ratio("flowgate", "direct"),
           "flowgate+plugin/direct": ratio("flowgate+plugin", "direct"),
           "flowgate/mitmdump": ratio("flowgate", "mitmdump"),
           "flowgate+plugin/mitmdump": ratio("flowgate+plugin", "mitmdump"),
           "plugin/no-plugin": ratio("flowgate+plugin", "flowgate"),
           "flowgate/hudsucker": ratio("flowgate", "hudsucker")}
    if "baseline" in t:
        out["flowgate/baseline"] = ratio("flowgate", "baseline")
    for target in t:
        if target.startswith("flowgate+") and target != "flowgate+plugin":
            out[f"{target.removeprefix('flowgate+')}/no-plugin"] = ratio(target, "flowgate")
    return out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(results):
    lines = ["| scenario | target | req/s | p50 ms | p99 ms | ok | peak RSS MiB |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, sc in results["scenarios"].items():
        if name in ("body", "idle-tls", "instructions"):
            continue
        for t, v in sc["targets"].items():
            rss = v["peak_rss_kib"] / 1024 if v["peak_rss_kib"] else None
            lines.append(f"| {name} | {t} | {v['rps']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | "
                         f"{v['success_rate'] * 100:.0f}% | {fmt(rss, '.1f')} |")
    body = results["scenarios"].get("body", {}).get("targets", {})
    if body:
        lines += ["", "| body | target | MB/s | peak RSS MiB | complete |", "|---|---|---:|---:|---|"]
        for t, v in body.items():
            rss = v["peak_rss_kib"] / 1024 if v["peak_rss_kib"] else None
            lines.append(f"| {results['settings']['body_bytes'] >> 20} MiB | {t} | {v['mb_per_s']:.0f} | {fmt(rss, '.1f')} | {v['complete']} |")
    idle = results["scenarios"].get("idle-tls", {}).get("targets", {})
    if idle:
        lines += ["", "| idle TLS | target | connections | failures | KiB per connection |", "|---|---|---:|---:|---:|"]
        for t, v in idle.items():
            lines.append(f"| idle | {t} | {v['connections']} | {v['failures']} | {fmt(v['per_connection_kib'], '.1f')} |")
    spin = results["scenarios"].get("spin", {}).get("spin", {})
    if spin:
        lines += ["", "| spin | target | req/s kept | p99 factor | /slow flows req/s |", "|---|---|---:|---:|---:|"]
        for t, v in spin.items():
            lines.append(f"| 10 spinning | {t} | {fmt(v['rps_kept'], '.2f')} | {fmt(v['p99_factor'], '.2f')} | "
                         f"{fmt(v['slow_flows_rps'], '.0f')} |")
    ins = results["scenarios"].get("instructions")
    if ins:
        per = {k: v["per_request"] for k, v in ins["targets"].items()}
        lines += ["", "| instructions per request | " + " | ".join(ins["protocols"]) + " |",
                  "|---|" + "---:|" * len(ins["protocols"])]
        names = dict.fromkeys(k.rsplit(" ", 1)[0] for k in per)
        for t in names:
            lines.append(f"| {t} | " + " | ".join(fmt(per.get(f"{t} {p}"), ",.0f") for p in ins["protocols"]) + " |")
        for a, b in [("flowgate", "hudsucker")] + [(t, "flowgate") for t in names if t.startswith("flowgate+")]:
            if a in names and b in names:
                lines.append(f"| {a}/{b} | " + " | ".join(
                    fmt(per[f"{a} {p}"] / per[f"{b} {p}"] if per.get(f"{b} {p}") and f"{a} {p}" in per else None, ".2f")
                    for p in ins["protocols"]) + " |")
    sweep = results["scenarios"].get("sweep")
    if sweep:
        names = sweep["sweep_targets"]
        lines += ["", "| sweep -c | " + " | ".join(f"{t} req/s | {t} p99 ms" for t in names) + " |"
                  + (" flowgate/hudsucker |" if "hudsucker" in names else ""),
                  "|---:|" + "---:|---:|" * len(names) + ("---:|" if "hudsucker" in names else "")]
        for c in sweep["connections"]:
            cells = []
            for t in names:
                v = sweep["targets"].get(f"{t} c={c}")
                cells += [fmt(v and v["rps"], ".0f"), fmt(v and v["p99_ms"], ".2f")]
            if "hudsucker" in names:
                cells.append(fmt(results["ratios"].get(f"sweep c={c}", {}).get("flowgate/hudsucker"), ".2f"))
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    hud = any(r.get("flowgate/hudsucker") is not None for r in results["ratios"].values())
    lines += ["", "| scenario | flowgate/direct | flowgate+plugin/direct | flowgate/mitmdump | plugin/no-plugin |"
              + (" flowgate/hudsucker |" if hud else ""), "|---|---:|---:|---:|---:|" + ("---:|" if hud else "")]
    for name, r in results["ratios"].items():
        lines.append(f"| {name} | {fmt(r['flowgate/direct'], '.2f')} | {fmt(r['flowgate+plugin/direct'], '.2f')} | "
                     f"{fmt(r['flowgate/mitmdump'], '.1f')} | {fmt(r['plugin/no-plugin'], '.2f')} |"
                     + (f" {fmt(r['flowgate/hudsucker'], '.2f')} |" if hud else ""))
    extra = sorted({k for r in results["ratios"].values() for k in r
                    if (k.endswith("/no-plugin") and k != "plugin/no-plugin") or k == "flowgate/baseline"})
    if extra:
        lines += ["", "| scenario | " + " | ".join(extra) + " |", "|---|" + "---:|" * len(extra)]
        for name, r in results["ratios"].items():
            lines.append(f"| {name} | " + " | ".join(fmt(r.get(k), '.2f') for k in extra) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs (under 3 minutes in all)")
    p.add_argument("--flowgate", required=True)
    p.add_argument("--plugin", required=True, help="the Rust plugin on every HTTP hook (request-id .wasm)")
    p.add_argument("--extra-plugin", dest="extra_plugins", action="append", default=[],
                   type=lambda v: tuple(v.split("=", 1)), metavar="NAME=PLUGIN",
                   help="also measure flowgate with this plugin (target flowgate+NAME) in the load scenarios")
    p.add_argument("--spin-plugin", help="spin-forever's .wasm: adds the spin scenario (a plugin spinning "
                   "on 10 concurrent flows, the other flows measured)")
    p.add_argument("--spin-rate", type=float, default=100.0,
                   help="requests per second the 10 /slow flows of the spin scenario offer (default 100: ten flows "
                   "each spinning to the 100 ms deadline; a budget that fails them at once must not turn them into "
                   "ten more full-speed clients); 0: as fast as they are answered")
    p.add_argument("--oha", default=shutil.which("oha") or "oha")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--mitmdump", default=shutil.which("mitmdump"), help="omit to skip mitmdump")
    p.add_argument("--hudsucker", help="hudsucker-noop (tests/bench/hudsucker, built by tests/bench/tools.sh): adds "
                   "target 'hudsucker', hudsucker's no-op MITM proxy, to h1-plain, h1-https, h2-https, new-tls and the "
                   "sweep; omit to skip it")
    p.add_argument("--baseline", help="another flowgate binary (say, main's) measured beside --flowgate "
                   "in the load scenarios and reverse mode, as target 'baseline'")
    p.add_argument("--only", type=lambda s: s.split(","), default=None,
                   help="comma-separated load scenarios to run (h1-plain,h1-https,h2-https,new-tls,sweep,reverse,spin,"
                   "instructions); "
                   "body and idle-tls are skipped with it")
    p.add_argument("--sweep", type=lambda s: [int(c) for c in s.split(",") if c],
                   help="the sweep's connection counts, comma-separated (default 1,10,100,500; quick: 10,100; "
                   "an empty string skips the sweep)")
    p.add_argument("--sweep-seconds", type=float, help="seconds of load per sweep point and round (default 3; quick: 1)")
    p.add_argument("--valgrind", help="valgrind: adds the instructions scenario (instructions per request of "
                   "flowgate, flowgate+plugin, the extra plugins, baseline and hudsucker, under callgrind)")
    p.add_argument("--instructions-requests", type=int,
                   help="requests counted per target and protocol in the instructions scenario (default 2000; quick: 300)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--body-size", type=int)
    p.add_argument("--idle", type=int)
    p.add_argument("--idle-mitmdump", type=int)
    p.add_argument("--out", default="target/bench/report.json")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    args = p.parse_args()
    quick = dict(rounds=3, seconds=1.0, body_size=256 << 20, idle=1000, idle_mitmdump=200,
                 sweep=[10, 100], sweep_seconds=1.0, instructions_requests=300)
    full = dict(rounds=5, seconds=5, body_size=1 << 30, idle=10000, idle_mitmdump=1000,
                sweep=[1, 10, 100, 500], sweep_seconds=3.0, instructions_requests=2000)
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.body_timeout = 600
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4 * args.idle + 1024) if hard != resource.RLIM_INFINITY else 4 * args.idle + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    start = time.monotonic()
    results = run(args)
    results["seconds"] = round(time.monotonic() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(table(results))
    print(f"\nwritten to {out} in {results['seconds']} s")


if __name__ == "__main__":
    main()
