#!/usr/bin/env bash
# User-space instructions per proxied request, switchyard vs nginx, counted by
# valgrind's callgrind: unlike time, the count does not depend on what else
# the machine is doing, so two builds (or two proxies) compare exactly.
#
#   bench/instructions.sh [--pgo] [--cache] [SECONDS [CONNECTIONS]]   # default 10 s, 8
#
# Both proxies front the same static nginx upstream (one worker, `return 200`)
# and get the same load: `wrk -t1 -c8 /version` (CONNECTIONS), keep-alive.
# Counters are zeroed after a 3 s warm-up, so start-up is not counted. Kernel
# time is not in the count (callgrind sees user space only); `perf` shows the
# kernel share per request to be about the same for both.
#
# --cache also simulates this machine's caches (32 KiB L1d and the 1 MiB L2 of
# one core as the last level) and prints the L2 misses (reads, writes) per
# request: what grows with the number of connections is not the instruction
# count but the memory each request touches that is no longer in cache (its
# connections' state, buffers, channel slots), e.g.
#   bench/instructions.sh --cache 8 256
# valgrind runs the proxy's threads one at a time through one simulated
# cache, so compare builds or proxies with each other, not with hardware.
# It also prints the simulated L1 instruction-cache misses per request.
#
# SWITCHYARD=PATH measures that binary as "switchyard" instead of
# target/release/switchyard (e.g. the plain build of an older tree).
#
# --pgo also measures the profile-guided build (`cargo xtask pgo`, the one the
# image ships) as "switchyard-pgo"; "switchyard" is `cargo build --release`.
#
# Needs: valgrind, wrk, nginx, curl (apt-get install -y valgrind wrk
# nginx-light curl); builds switchyard itself. nginx runs as one worker
# without a master (`master_process off`) so that callgrind sees it all.
set -euo pipefail
PGO=
if [ "${1:-}" = "--pgo" ]; then
    PGO=1
    shift
fi
CACHE=()
if [ "${1:-}" = "--cache" ]; then
    CACHE=(--cache-sim=yes --D1=32768,8,64 --LL=1048576,16,64)
    shift
fi
SECONDS_RUN=${1:-10}
CONNS=${2:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for tool in valgrind callgrind_control callgrind_annotate wrk nginx curl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install -y valgrind wrk nginx-light curl" >&2; exit 1; }
done
cargo build --release --locked -p switchyard --manifest-path "$ROOT/Cargo.toml" >&2
if [ -n "$PGO" ]; then
    (cd "$ROOT" && cargo xtask pgo --locked) >&2
fi

D=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); PX=$(free_port); AD=$(free_port); NG=$(free_port)

cat >"$D/up.conf" <<EOF
worker_processes 1; pid $D/up.pid; error_log $D/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{"version":"0.0.1","errors":[]}'; } } }
EOF
cat >"$D/nginx.conf" <<EOF
master_process off; worker_processes 1; pid $D/ng.pid; error_log $D/ng.err warn;
events { worker_connections 4096; }
http { access_log off;
  upstream api { server 127.0.0.1:$UP; keepalive 512; }
  server { listen 127.0.0.1:$NG;
    location / { proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; } } }
EOF
printf 'active = "blue"\n[pools.blue]\nendpoints = ["127.0.0.1:%s"]\n' "$UP" >"$D/upstreams.toml"
printf '[listen]\nhttp = "127.0.0.1:%s"\n[admin]\nlisten = "127.0.0.1:%s"\n[upstreams]\nfile = "upstreams.toml"\n[log]\naccess = false\n' "$PX" "$AD" >"$D/proxy.toml"

nginx -p "$D" -c "$D/up.conf" -g "daemon off;" &
PIDS+=($!)

# measure NAME PORT COMMAND...: instructions per request of COMMAND.
measure() {
    local name=$1 port=$2
    shift 2
    valgrind --tool=callgrind "${CACHE[@]}" --callgrind-out-file="$D/$name.%p" "$@" 2>"$D/$name.valgrind" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$port/version" && break; sleep 0.2; done
    wrk -t1 -c"$CONNS" -d3s "http://127.0.0.1:$port/version" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    local requests
    requests=$(wrk -t1 -c"$CONNS" -d"${SECONDS_RUN}s" "http://127.0.0.1:$port/version" | awk '/requests in/ {print $1}')
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local dump total
    dump="$D/$name.$pid.1" # the first dump asked for (-d); the one at exit has no suffix
    total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    printf '%-14s %9d requests  %6d instructions per request' "$name" "$requests" $((total / requests))
    if [ ${#CACHE[@]} -gt 0 ]; then
        # summary: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
        awk -v r="$requests" '/^summary:/ {printf "  L1i misses per request: %.0f  L2 misses per request: %.1f (%.1f reads, %.1f writes)", $5 / r, ($9 + $10) / r, $9 / r, $10 / r}' "$dump"
    fi
    printf '\n'
}

measure switchyard "$PX" "${SWITCHYARD:-$ROOT/target/release/switchyard}" -c "$D/proxy.toml"
if [ -n "$PGO" ]; then
    measure switchyard-pgo "$PX" "$ROOT/target/pgo/switchyard" -c "$D/proxy.toml"
fi
measure nginx "$NG" nginx -p "$D" -c "$D/nginx.conf" -g "daemon off;"
