"""Real processes for the chart checks: a loopback DNS server, upstreams and
switchyard replicas, so the command lines the chart renders (the hook Job's
`switchyard switch`, the test Pod's `switchyard status`) are run as they are,
and the metric names the PrometheusRule uses are checked against a real
`/metrics` scrape.

Only loopback addresses; every port is picked by the kernel (port 0) except
the admin port the chart renders, which the replicas bind on their own
loopback addresses (127.0.0.21-23) when it is free there.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import socketserver
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

# How long a wait on observable state may take before it is a failure.
WITHIN = 15.0


class LiveFailed(Exception):
    pass


def eventually(what: str, cond: Callable[[], bool], within: float = WITHIN) -> None:
    """Polls `cond` until it holds; fails naming `what` past the deadline."""
    deadline = time.monotonic() + within
    while True:
        try:
            if cond():
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() >= deadline:
            raise LiveFailed(f"not within {within:.0f} s: {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- DNS


class DnsServer:
    """A UDP DNS server on 127.0.0.1:0 answering A queries for the names it
    is given (any case, with or without the root dot); NODATA for other
    types of a known name, NXDOMAIN for the rest."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def set(self, name: str, ips: list[str]) -> None:
        self.records[name.rstrip(".").lower()] = ips

    def close(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            answer = self._answer(query)
            if answer is not None:
                try:
                    self.sock.sendto(answer, peer)
                except OSError:
                    return

    def _answer(self, q: bytes) -> bytes | None:
        if len(q) < 12:
            return None
        ident, flags, qdcount = struct.unpack("!HHH", q[:6])
        if qdcount != 1:
            return None
        labels, i = [], 12
        while i < len(q) and q[i] != 0:
            n = q[i]
            labels.append(q[i + 1:i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        i += 1
        if i + 4 > len(q):
            return None
        qtype, _qclass = struct.unpack("!HH", q[i:i + 4])
        question = q[12:i + 4]
        name = ".".join(labels).lower()
        rd = flags & 0x0100
        ips = self.records.get(name)
        answers = b""
        rcode = 0
        if ips is None:
            rcode = 3
        elif qtype == 1:
            for ip in ips:
                answers += struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(ip)
        count = len(ips) if (ips is not None and qtype == 1) else 0
        header = struct.pack("!HHHHHH", ident, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1, count, 0, 0)
        return header + question + answers


# ---------------------------------------------------------------- upstreams


class Upstream:
    """An HTTP server on 127.0.0.1:0 answering every GET with 200 and its name."""

    def __init__(self, body: str) -> None:
        payload = body.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- switchyard


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def admin_post(url: str, body: dict[str, Any], token: str) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5.0) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def upstreams_toml(active: str, blue: str, green: str) -> str:
    return f'active = "{active}"\n\n[pools.blue]\nendpoints = ["{blue}"]\n\n[pools.green]\nendpoints = ["{green}"]\n'


class Replica:
    """One `switchyard run` with its own files under `root`, its admin
    listener on `admin`, its data listener on 127.0.0.1:0."""

    def __init__(self, binary: Path, root: Path, admin: str, token: str, blue: str, green: str) -> None:
        self.root = root
        self.blue, self.green = blue, green
        root.mkdir(parents=True)
        (root / "token").write_text(token + "\n")
        self.write_upstreams("blue")
        (root / "proxy.toml").write_text(
            '[listen]\nhttp = "127.0.0.1:0"\n\n'
            f'[admin]\nlisten = "{admin}"\ntoken_file = "token"\npersist = false\n\n'
            '[upstreams]\nfile = "upstreams.toml"\nreread = "1s"\n\n'
            '[log]\naccess = false\n\n[runtime]\ncores = 1\n\n'
            '[timeouts]\nshutdown_delay = "0s"\nshutdown = "5s"\n')
        self.log = (root / "stdout").open("w+")
        self.proc = subprocess.Popen([str(binary), "run", "-c", str(root / "proxy.toml")],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.admin_url = f"http://{admin}"
        self.http = ""

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise LiveFailed(f"switchyard {admin} exited {self.proc.returncode}: {self.output()}")
            m = re.search(r"listening.*?\bhttp_addr=([0-9.]+:[0-9]+).*?\badmin_addr=([0-9.]+:[0-9]+)", self.output())
            if m:
                self.http = f"http://{m.group(1)}"
                self.admin_url = f"http://{m.group(2)}"
            return bool(m)

        eventually(f"switchyard {admin} logs its listening line", listening)

    def output(self) -> str:
        return (self.root / "stdout").read_text(errors="replace")

    def write_upstreams(self, active: str) -> None:
        """As the kubelet updates a ConfigMap: a new file renamed over the old."""
        tmp = self.root / "upstreams.toml.new"
        tmp.write_text(upstreams_toml(active, self.blue, self.green))
        tmp.rename(self.root / "upstreams.toml")

    def status(self) -> dict[str, Any]:
        code, text = http_get(f"{self.admin_url}/status")
        if code != 200:
            raise LiveFailed(f"{self.admin_url}/status: {code} {text}")
        return json.loads(text)

    def metrics(self) -> str:
        code, text = http_get(f"{self.admin_url}/metrics")
        if code != 200:
            raise LiveFailed(f"{self.admin_url}/metrics: {code} {text}")
        return text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def metric_families(exposition: str) -> set[str]:
    """The families a /metrics text declares (`# TYPE name kind`)."""
    return set(re.findall(r"^# TYPE (\S+) ", exposition, re.M))


def free_on(ips: list[str], port: int) -> bool:
    """Whether `port` can be bound on every one of `ips` now."""
    socks = []
    try:
        for ip in ips:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            # As the proxy's listener does (TIME_WAIT of an earlier run does not count).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


class Fleet:
    """Three replicas behind one DNS name, as the chart's headless admin
    Service gives them to the hook Job and the test Pod."""

    IPS = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]

    def __init__(self, binary: Path, name: str, port: int) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="switchyard-fleet-")
        root = Path(self.tmp.name)
        self.token = "fleet-check-token-0123456789"
        self.token_file = root / "token"
        self.token_file.write_text(self.token + "\n")
        if not free_on(self.IPS, port):
            # Someone else has that port on loopback: take one free on all three.
            probe = socket.socket()
            probe.bind((self.IPS[0], 0))
            port = probe.getsockname()[1]
            probe.close()
        self.port = port
        self.name = name
        self.blue, self.green = Upstream("blue"), Upstream("green")
        self.dns = DnsServer()
        self.dns.set(name, self.IPS)
        self.replicas: list[Replica] = []
        try:
            for i, ip in enumerate(self.IPS):
                self.replicas.append(Replica(binary, root / f"replica{i}", f"{ip}:{port}", self.token,
                                             self.blue.addr, self.green.addr))
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        for r in self.replicas:
            r.stop()
        self.dns.close()
        self.blue.close()
        self.green.close()
        self.tmp.cleanup()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def run(self, binary: Path, args: list[str], admin_dns: str, token_path: str | None) -> tuple[int, str]:
        """The rendered `args`, run as the container would, with only what
        the cluster gives differently here: the DNS server to ask
        (`--dns-server`, added), the admin port when 9901 was taken, and the
        token file's path when the rendered one is the Secret's mount."""
        run = []
        for a in args:
            if a == admin_dns:
                a = f"{admin_dns.rsplit(':', 1)[0]}:{self.port}"
            elif token_path is not None and a == token_path:
                a = str(self.token_file)
            run.append(a)
        run += ["--dns-server", self.dns.addr]
        out = subprocess.run([str(binary), *run], capture_output=True, text=True, timeout=180)
        return out.returncode, out.stdout + out.stderr

    def actives(self) -> list[str]:
        return [r.status()["active"] for r in self.replicas]
