#!/usr/bin/env python3
"""switchyard vs nginx vs HAProxy (and the upstream directly), on loopback.

One command:  python3 bench/proxy_bench.py [--rounds 10] [--duration 3]

In every round the targets run in a different (seeded) order, so that none
always runs first, or right after the same one (--fixed-order: always
direct, switchyard, switchyard+log, nginx, haproxy).

A/B of two switchyard builds in the same run (another build as an extra row):

  python3 bench/proxy_bench.py --compare before=/path/to/old/switchyard

The "switchyard" rows are the profile-guided build (`cargo xtask pgo`,
target/pgo/switchyard), the one the image ships; "switchyard-plain" is the
plain `cargo build --release` (--plain: measure only the plain build, as
"switchyard").

Needs: wrk, nginx (nginx-light), haproxy from Debian (apt-get install -y wrk
nginx-light haproxy), and ss (iproute2) for the pool rows; builds the
release binaries (and the profile-guided one) itself.

What it measures, in one run, in interleaved rounds:
  * proxied GET /version with keep-alive, wrk -t2 -c64 and -c256, through
    switchyard (access log off, and a row with it on), nginx (2 workers,
    upstream keepalive 512, access log off) and HAProxy (nbthread 2,
    http-reuse always), all in front of the same translation-api upstream,
    plus the upstream directly;
  * the peers do the header work switchyard always does: X-Forwarded-For
    replaced by the peer address, X-Forwarded-Proto and -Host set, an
    X-Request-Id generated (or kept), sent upstream and returned to the
    client. --plain-peers leaves that out (bare proxy_pass / server line);
  * medians of rps, p50, p99, and the medians of per-round ratios to the
    better peer; the proxy's own CPU time per request (user + system, from
    /proc, over each wrk run) and its user-space part; the peak RSS (VmHWM, summed over a server's
    processes);
  * the time from POST /switch sent to its answer (20 switches);
  * the file-switch latency: rename of upstreams.toml -> first answer of the
    new version, and the same for a kubelet-style `..data` swap (20 each);
  * memory of idle connections: the RSS (VmRSS) of a fresh switchyard
    before and after --idle-connections (5,000) keep-alive client
    connections, each after one GET /version, and the difference per idle
    connection (target: at most 16 KiB each). Alone, without wrk, nginx or
    HAProxy: python3 bench/proxy_bench.py --idle-only
  * a pool of three (unless --no-pool): three translation-api processes on
    127.0.0.1-3 behind the plain build, as IP literals ("pool3") and as a
    DNS name answered by a loopback DNS server of the script, re-resolved
    every 5 s, with health checks every second ("pool3+health"), and behind
    each --compare build ("NAME-pool3"); the share each upstream served
    (from the bytes each sent, `ss -ti`), and the ratios of those rows;
  * a 90/10 split (unless --no-split): the same build as "switchyard" with
    `[split] weights = { blue = 90, green = 10 }`, both pools on the same
    upstream ("switchyard-split"), and its ratios to "switchyard": what the
    per-request choice of a pool costs.
The machine is shared by the load generator, the proxy and the upstream:
compare the ratios, not the absolute figures.
"""

import argparse
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
PGO = os.path.join(ROOT, "target", "pgo", "switchyard")  # `cargo xtask pgo`


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10, host="127.0.0.1"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {port}")


def vm_hwm_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pids):
    """User and system CPU time of these processes so far, in seconds."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except OSError:
            pass
    tck = os.sysconf("SC_CLK_TCK")
    return user / tck, system / tck


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


LOGS = os.path.join(ROOT, "target", "bench-logs")


class Procs:
    """Processes started by the benchmark; their output goes to target/bench-logs/."""

    def __init__(self):
        self.procs = []
        os.makedirs(LOGS, exist_ok=True)

    def start(self, args, env=None, **kw):
        log = open(os.path.join(LOGS, f"{len(self.procs):02d}-{os.path.basename(args[0])}.log"), "w")
        p = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def children_cpu():
    """User + system CPU seconds of the waited-for children (the wrk runs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wrk(port, conns, duration, scheme="http", headers=()):
    """One `wrk -t2` run against GET /version; `headers` are extra `-H` lines
    (e.g. "Connection: close": a new connection, over https a new TLS
    handshake, for every request)."""
    extra = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", *extra, f"{scheme}://127.0.0.1:{port}/version"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)

    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    return {"rps": rps, "requests": requests, "p50": lat(50), "p99": lat(99),
            "errors": (int(errors.group(1)) if errors else 0), "socket_errors": sock.group(1) if sock else ""}


NGINX_HEADERS = """
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Request-Id $reqid;
      add_header X-Request-Id $reqid always;"""


def nginx_peer_conf(ngdir, listen, base, plain_peers, server_extra=""):
    """The fair nginx peer: 2 workers, upstream keep-alive (512) to
    127.0.0.1:`base`, access log off, and (unless `plain_peers`) the header
    work switchyard always does. `listen` is the rest of the listen line
    after the address (e.g. "reuseport", or "ssl http2 reuseport");
    `server_extra` goes into the server block (e.g. the certificate)."""
    headers = "" if plain_peers else NGINX_HEADERS
    return f"""
worker_processes 2;
pid {ngdir}/nginx.pid;
error_log {ngdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream api {{ server 127.0.0.1:{base}; keepalive 512; }}
  map $http_x_request_id $reqid {{ default $http_x_request_id; "" $request_id; }}
  server {{
    listen {listen};{server_extra}
    location / {{
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;{headers}
    }}
  }}
}}
"""


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def upstreams(active, blue, green):
    return (f'active = "{active}"\n\n[pools.blue]\nendpoints = ["127.0.0.1:{blue}"]\n\n'
            f'[pools.green]\nendpoints = ["127.0.0.1:{green}"]\n')


POOL_NAME = "pool3.bench."  # the DNS name of the pool of three (answered by LoopbackDns)
POOL_IPS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


class LoopbackDns(threading.Thread):
    """A tiny UDP DNS server on 127.0.0.1 for the pool-of-three rows: every
    A query is answered with POOL_IPS (TTL 5 s), any other type with no
    record. It serves only this benchmark, so it does not look at the name."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0

    def run(self):
        while True:
            try:
                q, peer = self.sock.recvfrom(512)
            except OSError:
                return
            if len(q) < 12:
                continue
            end = 12
            while end < len(q) and q[end] != 0:  # the question's name: labels up to the root
                end += q[end] + 1
            question = q[12:end + 5]
            qtype = int.from_bytes(q[end + 1:end + 3], "big") if end + 3 <= len(q) else 0
            answers = b""
            if qtype == 1:
                for ip in POOL_IPS:
                    answers += (b"\xc0\x0c" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big")
                                + (5).to_bytes(4, "big") + (4).to_bytes(2, "big") + socket.inet_aton(ip))
            count = len(POOL_IPS) if qtype == 1 else 0
            head = q[:2] + b"\x81\x80" + b"\x00\x01" + count.to_bytes(2, "big") + b"\x00\x00\x00\x00"
            self.queries += 1
            self.sock.sendto(head + question + answers, peer)

    def close(self):
        self.sock.close()


def sent_bytes(port):
    """Bytes sent so far on each open TCP connection from one of POOL_IPS'
    `port` (the kernel's per-socket bytes_sent, `ss -ti`): {(local ip,
    peer): bytes}. The upstreams' answers; their sockets' send calls are
    not in /proc/PID/io."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    conns, key = {}, None
    for line in out.splitlines():
        m = re.match(r"\s*\d+\s+\d+\s+(\S+):\d+\s+(\S+)", line)
        if m:
            key = (m.group(1), m.group(2))
            continue
        b = re.search(r"bytes_sent:(\d+)", line)
        if b and key:
            conns[key] = int(b.group(1))
    return conns


def shares_sent(before, after):
    """The share of the bytes sent between two sent_bytes() readings by each
    of POOL_IPS, counting the connections open at the second (those another
    proxy closed meanwhile, idle, drop out instead of counting negative)."""
    sent = {ip: 0 for ip in POOL_IPS}
    for key, n in after.items():
        if key[0] in sent:
            sent[key[0]] += n - before.get(key, 0)
    total = max(sum(sent.values()), 1)
    return [sent[ip] / total for ip in POOL_IPS]


def pool_port():
    """A port free on all of POOL_IPS (the three upstreams share it)."""
    for _ in range(50):
        port = free_port()
        try:
            for ip in POOL_IPS[1:]:
                with socket.socket() as s:
                    s.bind((ip, port))
            return port
        except OSError:
            continue
    raise SystemExit("no port free on 127.0.0.1-3")


def pool3_upstreams(port, dns):
    """The upstreams file of a pool of three: the IP literals, or (dns) the
    name LoopbackDns answers."""
    if dns:
        return f'active = "blue"\n\n[pools.blue]\ndns = "{POOL_NAME}:{port}"\n'
    eps = ", ".join(f'"{ip}:{port}"' for ip in POOL_IPS)
    return f'active = "blue"\n\n[pools.blue]\nendpoints = [{eps}]\n'


def proxy_toml(http, admin, upstreams_file, access):
    return (f'[listen]\nhttp = "127.0.0.1:{http}"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
            f'[upstreams]\nfile = "{upstreams_file}"\n[log]\naccess = {str(access).lower()}\n')


def post(port, path, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    t = time.perf_counter()
    c.request("POST", path, body=body, headers={"content-type": "application/json"})
    r = c.getresponse()
    data = r.read()
    took = time.perf_counter() - t
    c.close()
    return r.status, data, took


class Poller(threading.Thread):
    """Keeps one keep-alive connection busy with GET /version and records
    (time, version) of every answer."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.stop, self.answers, self.error = port, False, [], None

    def run(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while not self.stop:
            try:
                c.request("GET", "/version")
                r = c.getresponse()
                v = json.loads(r.read())["version"]
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                if not self.stop:  # at the end, the proxy's own shutdown may close it
                    self.error = f"GET /version through the proxy failed: {e!r}"
                return
            self.answers.append((time.perf_counter(), v))

    def first_after(self, t0, version, timeout=5):
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.error:
                raise SystemExit(self.error)
            hits = [t for t, v in self.answers[-5000:] if t >= t0 and v == version]
            if hits:
                return min(hits) - t0
            time.sleep(0.001)
        raise SystemExit(f"version {version} never answered")


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def get_once(s):
    """One GET /version on the keep-alive socket `s`; reads the whole answer."""
    s.sendall(b"GET /version HTTP/1.1\r\nHost: bench\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("the proxy closed an idle-test connection")
        got += chunk
    head, body = got.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("the proxy closed an idle-test connection")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"idle-test request answered {head[:40]!r}")


def idle_memory(procs, tmp, binary, upstream_port, n):
    """RSS of a fresh switchyard before and after `n` idle keep-alive client
    connections, each after one request: (before KiB, after KiB, KiB each)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < n + 100:
        raise SystemExit(f"--idle-connections {n}: this shell allows {hard} open files")
    d = os.path.join(tmp, "idle")
    os.makedirs(d)
    port, admin = free_port(), free_port()
    write(os.path.join(d, "upstreams.toml"), upstreams("blue", upstream_port, upstream_port))
    write(os.path.join(d, "proxy.toml"), proxy_toml(port, admin, "upstreams.toml", False))
    p = procs.start([binary, "-c", os.path.join(d, "proxy.toml")])
    wait_port(port)
    # Warm: the upstream connections and the allocator's first pages.
    for _ in range(64):
        with socket.create_connection(("127.0.0.1", port)) as s:
            get_once(s)
    time.sleep(0.5)
    before = vm_rss_kib(p.pid)
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        get_once(s)
        conns.append(s)
    time.sleep(1)
    after = vm_rss_kib(p.pid)
    for s in conns:
        s.close()
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    return before, after, (after - before) / n


def print_idle(binary, n, idle):
    before, after, each = idle
    print(f"idle keep-alive connections ({binary}): RSS {before / 1024:.1f} MiB with none, "
          f"{after / 1024:.1f} MiB with {n} (each after one request): {each:.1f} KiB per idle connection "
          f"(target <= 16 KiB)")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def print_ratios(results, concurrency, rounds, pairs):
    """For each (a, b): the medians of the per-round ratios a / b of rps,
    p99 and CPU per request."""
    for a, b in pairs:
        for conns in concurrency:
            ra, rb = results[(a, conns)], results[(b, conns)]

            def ratio(key):
                return median([ra[i][key] / rb[i][key] for i in range(rounds) if rb[i][key]])

            print(f"  {a} / {b} c{conns}: rps {ratio('rps'):.2f}x, p99 {ratio('p99'):.2f}x, "
                  f"CPU per request {ratio('cpu_us'):.2f}x")


def print_pool(results, concurrency, rounds, pool_targets, pool_rows, queries):
    """The share of the requests each of the pool's three upstreams served
    (from the bytes each wrote), and the ratios of the pool rows."""
    print(f"\npool of three ({', '.join(POOL_IPS)}): share each upstream served, median over the rounds "
          f"(from the bytes each sent on its connections, ss -ti bytes_sent; {queries} DNS queries answered)")
    for name in sorted(pool_targets):
        for conns in concurrency:
            rows = results[(name, conns)]
            shares = [median([r["shares"][i] for r in rows]) for i in range(len(POOL_IPS))]
            worst = max(abs(x - 1 / len(POOL_IPS)) for r in rows for x in r["shares"])
            print(f"  {name} c{conns}: " + " / ".join(f"{x * 100:.1f} %" for x in shares)
                  + f" (the farthest from a third in any round: {worst * 100:.1f} points)")
    print_ratios(results, concurrency, rounds, pool_rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10,
                    help="interleaved rounds; each figure is a median over them (default 10)")
    ap.add_argument("--duration", type=int, default=3, help="seconds of each wrk run (default 3)")
    ap.add_argument("--switches", type=int, default=20)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--plain", action="store_true",
                    help="measure the plain `cargo build --release` switchyard as \"switchyard\" "
                         "(default: the profile-guided build of `cargo xtask pgo`, the one the image "
                         "ships, with the plain build as an extra row)")
    ap.add_argument("--plain-peers", action="store_true",
                    help="nginx and HAProxy without the X-Forwarded-*/X-Request-Id work switchyard does")
    ap.add_argument("--upstream", choices=("api", "nginx"), default="api",
                    help="what the proxies front: translation-api (blue), or a static nginx answering "
                         "the same /version body (cheaper; see docs/performance.md)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=BINARY",
                    help="also measure this switchyard binary (access log off), as row NAME; repeatable")
    ap.add_argument("--fixed-order", action="store_true",
                    help="run the targets in the same order in every round (the default shuffles them)")
    ap.add_argument("--concurrency", default="64,256",
                    help="wrk connection counts, comma-separated (default 64,256)")
    ap.add_argument("--idle-connections", type=int, default=5000,
                    help="idle keep-alive client connections whose memory is measured (default 5000)")
    ap.add_argument("--no-pool", action="store_true",
                    help="leave out the pool-of-three rows (pool3, pool3+health, NAME-pool3)")
    ap.add_argument("--no-split", action="store_true",
                    help="leave out the switchyard-split row (the same build with a 90/10 split active)")
    ap.add_argument("--idle-only", action="store_true",
                    help="measure only the memory of idle connections (no wrk, nginx or HAProxy needed)")
    args = ap.parse_args()
    if args.idle_only:
        return idle_only(args)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    compare = []
    for spec in args.compare:
        name, sep, binary = spec.partition("=")
        if not sep or not name or not os.access(binary, os.X_OK):
            raise SystemExit(f"--compare {spec!r}: expected NAME=BINARY with an executable BINARY")
        compare.append((name, binary, False))
    for tool in ("wrk", "nginx", "haproxy"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is missing: apt-get install -y wrk nginx-light haproxy")
    if not args.no_pool and not shutil.which("ss"):
        raise SystemExit("ss is missing (the pool rows count each upstream's bytes with it): "
                         "apt-get install -y iproute2, or --no-pool")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "switchyard", "-p", "translation-api"],
                       cwd=ROOT, check=True)
        if not args.plain:
            subprocess.run(["cargo", "xtask", "pgo", "--locked"], cwd=ROOT, check=True)
    switchyard = f"{REL}/switchyard" if args.plain else PGO
    if not args.plain:
        if not os.access(PGO, os.X_OK):
            raise SystemExit(f"{PGO} is missing: run `cargo xtask pgo` (or drop --no-build)")
        compare.insert(0, ("switchyard-plain", f"{REL}/switchyard", False))

    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="switchyard-bench-")
    pool_pids, pool_targets, dns, pp = [], set(), None, 0
    try:
        blue, green = free_port(), free_port()
        api = procs.start([f"{REL}/translation-api", "--listen", f"127.0.0.1:{blue}", "--access-log=false"],
                          env={"APP_VERSION": "0.0.1"})
        upstream_pids = [api.pid]  # whose CPU the "upstream CPU" column counts
        procs.start([f"{REL}/translation-api", "--listen", f"127.0.0.1:{green}", "--access-log=false"],
                    env={"APP_VERSION": "0.0.2"})
        wait_port(blue)
        wait_port(green)
        base = blue
        if args.upstream == "nginx":
            base = free_port()
            updir = os.path.join(tmp, "upstream-nginx")
            os.makedirs(updir)
            write(os.path.join(updir, "nginx.conf"), f"""
worker_processes 1;
pid {updir}/nginx.pid;
error_log {updir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  server {{
    listen 127.0.0.1:{base};
    location / {{ default_type application/json; return 200 '{{"version":"0.0.1","errors":[]}}'; }}
  }}
}}
""")
            up = procs.start(["nginx", "-p", updir, "-c", os.path.join(updir, "nginx.conf"), "-g", "daemon off;"])
            wait_port(base)
            for _ in range(100):  # its worker, forked after the listener is bound
                if children(up.pid):
                    break
                time.sleep(0.02)
            upstream_pids = [up.pid] + children(up.pid)

        targets = {"direct": (base, [])}
        ours = [("switchyard", switchyard, False), ("switchyard+log", switchyard, True)]
        for name, binary, access in ours + compare:
            d = os.path.join(tmp, name)
            os.makedirs(d)
            port, admin = free_port(), free_port()
            write(os.path.join(d, "upstreams.toml"), upstreams("blue", base, green))
            write(os.path.join(d, "proxy.toml"), proxy_toml(port, admin, "upstreams.toml", access))
            p = procs.start([binary, "-c", os.path.join(d, "proxy.toml")])
            wait_port(port)
            targets[name] = (port, [p.pid], admin)

        # A 90/10 split: the same build as "switchyard", both pools on the
        # same upstream, so the row differs only by the per-request choice
        # of the pool (what a canary costs).
        if not args.no_split:
            d = os.path.join(tmp, "switchyard-split")
            os.makedirs(d)
            port, admin = free_port(), free_port()
            write(os.path.join(d, "upstreams.toml"),
                  upstreams("blue", base, base) + '\n[split]\nweights = { blue = 90, green = 10 }\n')
            write(os.path.join(d, "proxy.toml"), proxy_toml(port, admin, "upstreams.toml", False))
            p = procs.start([switchyard, "-c", os.path.join(d, "proxy.toml")])
            wait_port(port)
            targets["switchyard-split"] = (port, [p.pid], admin)

        # The pool of three: three translation-api processes on 127.0.0.1-3,
        # one port, behind the plain build (as the --compare builds, so that
        # NAME-pool3 compares like for like): "pool3" lists them as IP
        # literals with no active health check; "pool3+health" finds them
        # through DNS (LoopbackDns, re-resolved every 5 s) and checks each
        # with GET /healthz every second.
        pool_rows = []  # (with, without): the pairs whose ratio is printed
        if not args.no_pool:
            pp = pool_port()
            for ip in POOL_IPS:
                pool_pids.append(procs.start([f"{REL}/translation-api", "--listen", f"{ip}:{pp}",
                                              "--access-log=false"], env={"APP_VERSION": "0.0.1"}).pid)
            for ip in POOL_IPS:
                wait_port(pp, host=ip)
            dns = LoopbackDns()
            dns.start()
            extra = (f'\n[discovery]\nevery = "5s"\nnameservers = ["127.0.0.1:{dns.port}"]\n'
                     f'\n[health]\npath = "/healthz"\ninterval = "1s"\n')
            pools = [("pool3", f"{REL}/switchyard", False, ""), ("pool3+health", f"{REL}/switchyard", True, extra)]
            pools += [(f"{name}-pool3", binary, False, "") for name, binary, _ in compare if name != "switchyard-plain"]
            for name, binary, use_dns, more in pools:
                d = os.path.join(tmp, name)
                os.makedirs(d)
                port, admin = free_port(), free_port()
                write(os.path.join(d, "upstreams.toml"), pool3_upstreams(pp, use_dns) + more)
                write(os.path.join(d, "proxy.toml"), proxy_toml(port, admin, "upstreams.toml", False))
                p = procs.start([binary, "-c", os.path.join(d, "proxy.toml")])
                wait_port(port)
                targets[name] = (port, [p.pid], admin)
                pool_targets.add(name)
            pool_rows.append(("pool3+health", "pool3"))
            pool_rows += [("pool3", name) for name, _, _, _ in pools[2:]]

        if args.plain_peers:
            hp_frontend, hp_backend = "", ""
        else:
            hp_frontend = """
  unique-id-format %{+X}o%ci%cp%Ts%rt%pid
  http-request set-header X-Request-Id %[unique-id] unless { req.hdr(x-request-id) -m found }
  http-request del-header X-Forwarded-For
  option forwardfor
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-var(txn.reqid) req.hdr(x-request-id)
  http-response set-header X-Request-Id %[var(txn.reqid)]"""
            hp_backend = ""
        ng = free_port()
        ngdir = os.path.join(tmp, "nginx")
        os.makedirs(ngdir)
        write(os.path.join(ngdir, "nginx.conf"),
              nginx_peer_conf(ngdir, f"127.0.0.1:{ng} reuseport", base, args.plain_peers))
        n = procs.start(["nginx", "-p", ngdir, "-c", os.path.join(ngdir, "nginx.conf"), "-g", "daemon off;"])
        wait_port(ng)
        targets["nginx"] = (ng, [n.pid] + children(n.pid))

        hp = free_port()
        write(os.path.join(tmp, "haproxy.cfg"), f"""
global
  nbthread 2
  maxconn 8192
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:{hp}{hp_frontend}
  default_backend be
backend be{hp_backend}
  server api 127.0.0.1:{base} maxconn 1024
""")
        h = procs.start(["haproxy", "-f", os.path.join(tmp, "haproxy.cfg")])
        wait_port(hp)
        targets["haproxy"] = (hp, [h.pid])

        # Warm-up: connection pools of every proxy.
        for name, t in targets.items():
            wrk(t[0], 256, 1)

        results = {}  # (name, conns) -> list of per-round dicts
        for r in range(args.rounds):
            for conns in concurrency:
                order = list(targets.items())
                if not args.fixed_order:
                    random.Random(r * 1000 + conns).shuffle(order)
                for name, t in order:
                    ups = pool_pids if name in pool_targets else upstream_pids
                    b0 = sent_bytes(pp) if pool_pids else {}
                    (u0, s0), up0, w0 = cpu_seconds(t[1]), sum(cpu_seconds(ups)), children_cpu()
                    res = wrk(t[0], conns, args.duration)
                    (u1, s1), up1, w1 = cpu_seconds(t[1]), sum(cpu_seconds(ups)), children_cpu()
                    if name in pool_targets:  # every answer is the same size: bytes sent = share served
                        res["shares"] = shares_sent(b0, sent_bytes(pp))
                    n = max(res["requests"], 1)
                    res["cpu_us"] = (u1 - u0 + s1 - s0) / n * 1e6
                    res["user_us"] = (u1 - u0) / n * 1e6
                    res["up_us"] = (up1 - up0) / n * 1e6
                    res["wrk_us"] = (w1 - w0) / n * 1e6
                    results.setdefault((name, conns), []).append(res)
                    print(f"round {r + 1} c{conns:<3} {name:<15} {res['rps']:>9.0f} rps  p50 {res['p50']:.2f} ms"
                          f"  p99 {res['p99']:.2f} ms  non-2xx {res['errors']} {res['socket_errors']}",
                          file=sys.stderr)
        rss = {name: vm_hwm_kib(t[1]) / 1024 for name, t in targets.items() if t[1]}

        # POST /switch: time to answer (a table store), alternating pools.
        sy_admin = targets["switchyard"][2]
        switch_ms = []
        for i in range(args.switches):
            status, body, took = post(sy_admin, "/switch", json.dumps({"to": "green" if i % 2 == 0 else "blue"}))
            assert status == 200, body
            switch_ms.append(took * 1000)

        def file_switches(d, update):
            """Starts a switchyard on `d`/proxy.toml and times `update(i, text)`
            (which returns when the change happened) -> first new answer."""
            port, admin = free_port(), free_port()
            write(os.path.join(d, "proxy.toml"), proxy_toml(port, admin, "upstreams.toml", False))
            procs.start([switchyard, "-c", os.path.join(d, "proxy.toml")])
            wait_port(port)
            poller = Poller(port)
            poller.start()
            took = []
            for i in range(args.switches):
                want = "green" if i % 2 == 0 else "blue"
                t0 = update(i + 1, upstreams(want, blue, green))
                took.append(poller.first_after(t0, "0.0.2" if want == "green" else "0.0.1") * 1000)
                time.sleep(0.05)
            poller.stop = True
            return took

        # File switch: temp file renamed over upstreams.toml.
        d = os.path.join(tmp, "file")
        os.makedirs(d)
        path = os.path.join(d, "upstreams.toml")

        def rename_update(_n, text):
            write(path + ".tmp", text)
            t0 = time.perf_counter()
            os.rename(path + ".tmp", path)
            return t0

        write(path, upstreams("blue", blue, green))
        rename_ms = file_switches(d, rename_update)

        # kubelet ConfigMap swap: ..data -> new timestamped dir, atomically.
        k = os.path.join(tmp, "kubelet")
        os.makedirs(k)

        def kube_update(n, text):
            name = f"..2026_11_28_00_00_00.{n:06d}"
            os.makedirs(os.path.join(k, name))
            write(os.path.join(k, name, "upstreams.toml"), text)
            os.symlink(name, os.path.join(k, "..data_tmp"))
            t0 = time.perf_counter()
            os.rename(os.path.join(k, "..data_tmp"), os.path.join(k, "..data"))
            old = sorted(x for x in os.listdir(k) if x.startswith("..2026") and x != name)
            for o in old:
                shutil.rmtree(os.path.join(k, o))
            return t0

        kube_update(0, upstreams("blue", blue, green))
        os.symlink("..data/upstreams.toml", os.path.join(k, "upstreams.toml"))
        swap_ms = file_switches(k, kube_update)

        idle = idle_memory(procs, tmp, switchyard, base, args.idle_connections)
    finally:
        procs.stop()
        if dns:
            dns.close()
        shutil.rmtree(tmp, ignore_errors=True)

    # Report.
    print(f"\n{args.rounds} interleaved rounds, wrk -t2 -d{args.duration}s, GET /version, keep-alive, "
          f"upstream {args.upstream}; medians\n")
    print("| target | c | rps | p50 ms | p99 ms | rps / better peer | p99 / better peer's "
          "| CPU µs / request | of it user | upstream CPU µs / request | wrk CPU µs / request | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for conns in concurrency:
        for name, t in targets.items():
            rows = results[(name, conns)]
            ratios, p99r = [], []
            for i in range(args.rounds):
                ng_r, hp_r = results[("nginx", conns)][i], results[("haproxy", conns)][i]
                better = ng_r if ng_r["rps"] >= hp_r["rps"] else hp_r
                ratios.append(rows[i]["rps"] / better["rps"])
                p99r.append(rows[i]["p99"] / min(ng_r["p99"], hp_r["p99"]))
            peer = name in ("nginx", "haproxy")
            r = "" if peer else f"{median(ratios):.2f}x"
            p = "" if peer else f"{median(p99r):.2f}x"
            cpu = f"{median([x['cpu_us'] for x in rows]):.1f}" if t[1] else ""
            user = f"{median([x['user_us'] for x in rows]):.1f}" if t[1] else ""
            mem = f"{rss[name]:.1f}" if name in rss else ""
            up = f"{median([x['up_us'] for x in rows]):.1f}"
            wk = f"{median([x['wrk_us'] for x in rows]):.1f}"
            print(f"| {name} | {conns} | {median([x['rps'] for x in rows]):.0f} | {median([x['p50'] for x in rows]):.2f}"
                  f" | {median([x['p99'] for x in rows]):.2f} | {r} | {p} | {cpu} | {user} | {up} | {wk} | {mem} |")
    print(f"\npeers: {'plain (no header work)' if args.plain_peers else 'same header work as switchyard'}"
          f"{'; targets in the same order in every round' if args.fixed_order else '; targets in a shuffled order in every round'}")
    print(f"switchyard: {switchyard}")
    for name, binary, _ in compare:
        print(f"{name}: {binary}")
    print(f"\nPOST /switch answered in: median {median(switch_ms):.3f} ms, max {max(switch_ms):.3f} ms "
          f"({args.switches} switches, client-side round trip)")
    print(f"file rename -> first new answer: median {median(rename_ms):.1f} ms, max {max(rename_ms):.1f} ms "
          f"({args.switches} switches)")
    print(f"..data swap -> first new answer: median {median(swap_ms):.1f} ms, max {max(swap_ms):.1f} ms "
          f"({args.switches} switches)")
    failed = sum(x["errors"] for rows in results.values() for x in rows)
    print(f"non-2xx answers over all runs: {failed}")
    print_idle(switchyard, args.idle_connections, idle)
    if pool_targets:
        print_pool(results, concurrency, args.rounds, pool_targets, pool_rows, dns.queries)
    if "switchyard-split" in targets:
        print("\na 90/10 split against no split, the same build (medians of per-round ratios):")
        print_ratios(results, concurrency, args.rounds, [("switchyard-split", "switchyard")])
    ref = "switchyard-plain" if "switchyard-plain" in targets else "switchyard"
    pairs = [(ref, name) for name, _, _ in compare if name != "switchyard-plain"]
    if pairs:
        print("\nthis tree's plain build / each --compare build (medians of per-round ratios):")
        print_ratios(results, concurrency, args.rounds, pairs)


def idle_only(args):
    """--idle-only: the memory of idle connections, on the plain release
    build unless --plain is left out and the profile-guided one exists."""
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "switchyard", "-p", "translation-api"],
                       cwd=ROOT, check=True)
    switchyard = PGO if (not args.plain and os.access(PGO, os.X_OK)) else f"{REL}/switchyard"
    procs = Procs()
    tmp = tempfile.mkdtemp(prefix="switchyard-bench-")
    try:
        up = free_port()
        procs.start([f"{REL}/translation-api", "--listen", f"127.0.0.1:{up}", "--access-log=false"],
                    env={"APP_VERSION": "0.0.1"})
        wait_port(up)
        idle = idle_memory(procs, tmp, switchyard, up, args.idle_connections)
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print_idle(switchyard, args.idle_connections, idle)


if __name__ == "__main__":
    main()
