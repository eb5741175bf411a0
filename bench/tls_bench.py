#!/usr/bin/env python3
"""switchyard vs nginx terminating TLS, on loopback, in the same run.

One command:  python3 bench/tls_bench.py [--rounds 10] [--duration 3]

Both proxies serve the same generated certificates (ECDSA P-256 and
RSA-2048, made with the `openssl` CLI for the run) and proxy to the same
translation-api upstream over plain HTTP/1.1 keep-alive; nginx is
proxy_bench.py's fair peer (2 workers, upstream keepalive 512, access log
off, the same X-Forwarded-*/X-Request-Id work switchyard does) with an
`ssl http2` listener. Every round runs every row against every target, the
targets of each row in a different (seeded) order.

The rows:
  * handshake ECDSA / handshake RSA: new TLS 1.3 handshakes per second.
    `wrk -t2 -c64 -H "Connection: close"`: every request opens a new
    connection and makes a full handshake (wrk does not resume sessions),
    sends one GET /version and is closed by the server after the answer.
    The figure is requests/s = handshakes/s (each with one proxied request);
  * h1 keep-alive: HTTPS GET /version over HTTP/1.1, `wrk -t2 -c64`;
  * h2 CxM: HTTPS GET /version over HTTP/2, `h2load -t2 -cC -mM` (C
    connections, M streams in flight on each); the p99 is computed from
    h2load's per-request log (h2load prints no percentiles).
For each: medians over the rounds of requests/s and p99, the medians of the
per-round ratios to nginx, and the proxy's own CPU time per request (user +
system, from /proc) and the load generator's.

The switchyard measured is the plain `cargo build --release` build
(target/release/switchyard): the profile-guided build's training sends no
TLS, so its TLS code is laid out as cold code. --pgo adds the
profile-guided build (target/pgo/switchyard, `cargo xtask pgo`) as the row
"switchyard-pgo".

Needs: wrk, nginx (nginx-light, built with ssl and http2), h2load
(nghttp2-client), openssl:
  apt-get install -y wrk nginx-light nghttp2-client openssl
The machine is shared by the load generator, the proxies and the upstream:
compare the ratios, not the absolute figures.
"""

import argparse
import json
import os
import random
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_bench as pb  # noqa: E402  (the helpers and the fair nginx peer)

APT = "apt-get install -y wrk nginx-light nghttp2-client openssl"


def make_cert(d, kind):
    """A self-signed certificate for localhost / 127.0.0.1: (cert, key)."""
    cert, key = os.path.join(d, f"{kind}.crt"), os.path.join(d, f"{kind}.key")
    newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ecdsa" else ["-newkey", "rsa:2048"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", key, "-out", cert, "-days", "30",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def tls_params(port, alpn=None):
    """What `openssl s_client` negotiates with 127.0.0.1:port: protocol,
    cipher, key exchange, signature and ALPN, as one line."""
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
    if alpn:
        cmd += ["-alpn", alpn]
    out = subprocess.run(cmd, input="", capture_output=True, text=True, errors="replace", timeout=10).stdout

    def find(pattern):
        m = re.search(pattern, out)
        return m.group(1).strip() if m else "?"

    proto, cipher = find(r"New, (TLSv[\d.]+)"), find(r"Cipher is (\S+)")
    kx, sig = find(r"(?:Server|Peer) Temp Key: ([^,\n]+)"), find(r"Peer signature type: (\S+)")
    line = f"{proto}, {cipher}, key exchange {kx}, signature {sig}"
    if alpn:
        line += f", ALPN {find(r'ALPN protocol: (.+)')}"
    return line


def handshake_client(port, duration):
    """One handshake client (a process of its own, started by handshakes()):
    for `duration` seconds, one connection after the other, each a full TLS
    1.3 handshake (a new SSLSocket with no session given: nothing is
    resumed), one `GET /version` with `Connection: close`, the answer read
    to the server's close. Prints JSON: the latency of each (connect +
    handshake + request, ms) and the count of failures (no 200)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # as wrk and h2load: the signature is still checked by the handshake
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    request = b"GET /version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    latencies, failed, resumed = [], 0, 0
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        data = b""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    resumed += s.session_reused
                    s.sendall(request)
                    while True:
                        try:
                            chunk = s.recv(4096)
                        except ssl.SSLError:  # closed without close_notify, after the answer
                            break
                        if not chunk:
                            break
                        data += chunk
        except OSError:
            pass
        if data.startswith(b"HTTP/1.1 200"):
            latencies.append((time.perf_counter() - t0) * 1000)
        else:
            failed += 1
    print(json.dumps({"latencies": latencies, "failed": failed, "resumed": resumed}))


def handshakes(port, clients, duration):
    """New TLS 1.3 handshakes per second: `clients` handshake_client
    processes at once against 127.0.0.1:port."""
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--handshake-client", str(port),
                               str(duration)], stdout=subprocess.PIPE, text=True) for _ in range(clients)]
    latencies, failed, resumed = [], 0, 0
    for p in procs:
        out, _ = p.communicate()
        got = json.loads(out)
        latencies += got["latencies"]
        failed += got["failed"]
        resumed += got["resumed"]
    if resumed:
        raise SystemExit(f"{resumed} handshakes with port {port} were resumed: not full handshakes")
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] if latencies else float("nan")

    return {"rps": len(latencies) / duration, "requests": len(latencies), "p50": pct(50), "p99": pct(99),
            "errors": failed, "socket_errors": ""}


def h2load(port, conns, streams, duration, log):
    out = subprocess.run(
        ["h2load", "-t2", f"-c{conns}", f"-m{streams}", "-D", str(duration), "--log-file", log,
         f"https://127.0.0.1:{port}/version"],
        capture_output=True, text=True, check=True).stdout
    if "Application protocol: h2" not in out:
        raise SystemExit(f"h2load did not negotiate h2 with port {port}:\n{out}")
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                     out)
    rps = float(re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out).group(1))
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    # The log: one line per request, "start (µs since the epoch)\tstatus\tduration (µs)".
    durations = []
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                durations.append(int(parts[2]))
    durations.sort()

    def pct(p):
        return durations[min(len(durations) - 1, int(len(durations) * p / 100))] / 1000 if durations else float("nan")

    return {"rps": rps, "requests": int(done.group(4)), "p50": pct(50), "p99": pct(99),
            "errors": int(done.group(5)) + int(done.group(6)) + sum(int(status.group(i)) for i in (3, 4)),
            "socket_errors": ""}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10,
                    help="interleaved rounds; each figure is a median over them (default 10)")
    ap.add_argument("--duration", type=int, default=3, help="seconds of each run (default 3)")
    ap.add_argument("--connections", type=int, default=64,
                    help="wrk connections of the handshake and h1 rows (default 64)")
    ap.add_argument("--h2", default="64x1,8x8",
                    help="the h2 rows as CONNECTIONSxSTREAMS, comma-separated (default 64x1,8x8)")
    ap.add_argument("--no-build", action="store_true", help="measure the binaries the previous run built")
    ap.add_argument("--pgo", action="store_true",
                    help="also measure the profile-guided build (target/pgo/switchyard, built by "
                         "`cargo xtask pgo` unless --no-build) as row switchyard-pgo")
    ap.add_argument("--plain-peers", action="store_true",
                    help="nginx without the X-Forwarded-*/X-Request-Id work switchyard does")
    ap.add_argument("--handshake-clients", type=int, default=16,
                    help="handshake client processes at once in the handshake rows (default 16)")
    ap.add_argument("--handshake-client", nargs=2, metavar=("PORT", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.handshake_client:
        return handshake_client(int(args.handshake_client[0]), float(args.handshake_client[1]))
    h2_shapes = []
    for spec in args.h2.split(","):
        c, sep, m = spec.partition("x")
        if not sep or not c.isdigit() or not m.isdigit() or int(c) < 1 or int(m) < 1:
            raise SystemExit(f"--h2 {spec!r}: expected CONNECTIONSxSTREAMS, e.g. 64x1")
        h2_shapes.append((int(c), int(m)))
    for tool in ("wrk", "nginx", "h2load", "openssl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            raise SystemExit(f"{tool} is missing: {APT}")
    nginx_v = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    if "http_ssl_module" not in nginx_v or "http_v2_module" not in nginx_v:
        raise SystemExit(f"this nginx has no ssl or http2 module: {APT}")
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "switchyard", "-p", "translation-api"],
                       cwd=pb.ROOT, check=True)
        if args.pgo:
            subprocess.run(["cargo", "xtask", "pgo", "--locked"], cwd=pb.ROOT, check=True)
    ours = [("switchyard", f"{pb.REL}/switchyard")]
    if args.pgo:
        if not os.access(pb.PGO, os.X_OK):
            raise SystemExit(f"{pb.PGO} is missing: run `cargo xtask pgo` (or drop --no-build)")
        ours.append(("switchyard-pgo", pb.PGO))

    procs = pb.Procs()
    tmp = tempfile.mkdtemp(prefix="switchyard-tls-bench-")
    try:
        certs = {kind: make_cert(tmp, kind) for kind in ("ecdsa", "rsa")}
        base = pb.free_port()
        api = procs.start([f"{pb.REL}/translation-api", "--listen", f"127.0.0.1:{base}", "--access-log=false"],
                          env={"APP_VERSION": "0.0.1"})
        pb.wait_port(base)
        upstream_pids = [api.pid]

        # targets[(name, kind)] = (https port, pids)
        targets = {}
        for name, binary in ours:
            for kind, (cert, key) in certs.items():
                d = os.path.join(tmp, f"{name}-{kind}")
                os.makedirs(d)
                http, https, admin = pb.free_port(), pb.free_port(), pb.free_port()
                pb.write(os.path.join(d, "upstreams.toml"), pb.upstreams("blue", base, base))
                pb.write(os.path.join(d, "proxy.toml"),
                         f'[listen]\nhttp = "127.0.0.1:{http}"\nhttps = "127.0.0.1:{https}"\n'
                         f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
                         f'[admin]\nlisten = "127.0.0.1:{admin}"\n[upstreams]\nfile = "upstreams.toml"\n'
                         f'[log]\naccess = false\n')
                p = procs.start([binary, "-c", os.path.join(d, "proxy.toml")])
                pb.wait_port(https)
                targets[(name, kind)] = (https, [p.pid])
        for kind, (cert, key) in certs.items():
            ngdir = os.path.join(tmp, f"nginx-{kind}")
            os.makedirs(ngdir)
            port = pb.free_port()
            # keepalive_requests: nginx closes a client connection after 1000
            # requests by default (a new handshake); switchyard has no such cap.
            tls = (f"\n    ssl_certificate {cert};\n    ssl_certificate_key {key};"
                   f"\n    ssl_protocols TLSv1.2 TLSv1.3;\n    keepalive_requests 1000000;")
            pb.write(os.path.join(ngdir, "nginx.conf"),
                     pb.nginx_peer_conf(ngdir, f"127.0.0.1:{port} ssl http2 reuseport", base, args.plain_peers, tls))
            n = procs.start(["nginx", "-p", ngdir, "-c", os.path.join(ngdir, "nginx.conf"), "-g", "daemon off;"])
            pb.wait_port(port)
            for _ in range(100):  # its workers, forked after the listener is bound
                if len(pb.children(n.pid)) >= 2:
                    break
                time.sleep(0.02)
            targets[("nginx", kind)] = (port, [n.pid] + pb.children(n.pid))

        names = [name for name, _ in ours] + ["nginx"]
        negotiated = {}
        for (name, kind), (port, _) in targets.items():
            negotiated[(name, kind)] = tls_params(port)
            if kind == "ecdsa":
                negotiated[(name, "h2")] = tls_params(port, "h2,http/1.1")

        # rows: (label, certificate kind, runner)
        conns = args.connections
        rows = [
            ("handshake ECDSA", "ecdsa", lambda port: handshakes(port, args.handshake_clients, args.duration)),
            ("handshake RSA", "rsa", lambda port: handshakes(port, args.handshake_clients, args.duration)),
            (f"h1 keep-alive c{conns}", "ecdsa", lambda port: pb.wrk(port, conns, args.duration, "https")),
        ]
        for c, m in h2_shapes:
            rows.append((f"h2 c{c} m{m}", "ecdsa",
                         lambda port, c=c, m=m: h2load(port, c, m, args.duration, os.path.join(tmp, "h2load.log"))))

        # Warm-up: every target's upstream connections and allocator.
        for (name, kind), (port, _) in targets.items():
            pb.wrk(port, conns, 1, "https")

        results = {}  # (row, name) -> per-round dicts
        for r in range(args.rounds):
            for i, (label, kind, run) in enumerate(rows):
                order = list(names)
                random.Random(r * 1000 + i).shuffle(order)
                for name in order:
                    port, pids = targets[(name, kind)]
                    (u0, s0), w0 = pb.cpu_seconds(pids), pb.children_cpu()
                    res = run(port)
                    (u1, s1), w1 = pb.cpu_seconds(pids), pb.children_cpu()
                    n = max(res["requests"], 1)
                    res["cpu_us"] = (u1 - u0 + s1 - s0) / n * 1e6
                    res["user_us"] = (u1 - u0) / n * 1e6
                    res["client_us"] = (w1 - w0) / n * 1e6
                    results.setdefault((label, name), []).append(res)
                    print(f"round {r + 1} {label:<16} {name:<15} {res['rps']:>9.0f} rps  p99 {res['p99']:.2f} ms"
                          f"  failed/non-2xx {res['errors']} {res['socket_errors']}", file=sys.stderr)
        rss = {name: max(pb.vm_hwm_kib(targets[(name, k)][1]) for k in certs) / 1024 for name in names}
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.rounds} interleaved rounds of {args.duration} s, GET /version through each proxy to one "
          f"translation-api upstream; medians\n")
    print("| row | target | rps | p99 ms | rps / nginx | p99 / nginx's | CPU µs / request | of it user "
          "| client CPU µs / request |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, _, _ in rows:
        ng = results[(label, "nginx")]
        for name in names:
            got = results[(label, name)]
            ratio = "" if name == "nginx" else f"{pb.median([a['rps'] / b['rps'] for a, b in zip(got, ng)]):.2f}x"
            p99r = "" if name == "nginx" else f"{pb.median([a['p99'] / b['p99'] for a, b in zip(got, ng)]):.2f}x"
            print(f"| {label} | {name} | {pb.median([x['rps'] for x in got]):.0f} "
                  f"| {pb.median([x['p99'] for x in got]):.2f} | {ratio} | {p99r} "
                  f"| {pb.median([x['cpu_us'] for x in got]):.1f} | {pb.median([x['user_us'] for x in got]):.1f} "
                  f"| {pb.median([x['client_us'] for x in got]):.1f} |")
    print("\nnegotiated (openssl s_client):")
    for (name, kind), line in negotiated.items():
        print(f"  {name} {kind}: {line}")
    for name, binary in ours:
        print(f"{name}: {binary}")
    print(f"peers: {'plain (no header work)' if args.plain_peers else 'same header work as switchyard'}")
    print("peak RSS MiB (VmHWM, nginx: master and workers summed; the larger of its two instances): "
          + ", ".join(f"{name} {mib:.1f}" for name, mib in rss.items()))
    failed = sum(x["errors"] for xs in results.values() for x in xs)
    print(f"failed or non-2xx requests over all runs: {failed}")


if __name__ == "__main__":
    main()
