#!/usr/bin/env bash
# translation-api throughput next to nginx serving the same JSON bodies as a
# static `return 200`, keep-alive, `wrk -t2 -c64`, in interleaved rounds.
#
#   bench/api-vs-nginx.sh                 # 5 rounds of 5 s per variant and path
#   ROUNDS=7 DURATION=10s bench/api-vs-nginx.sh
#
# Variants: nginx (2 workers, access log off, keepalive), translation-api with
# the access log off, and with it on (written to a pipe drained by `cat`, the
# way a container's stdout is). All servers, wrk and the log reader share the
# machine, so only ratios measured within one run mean anything; the median
# of the per-round ratios is the figure to quote.
# Needs: nginx (nginx-light), wrk, cargo. Rerunnable; leaves nothing behind.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}

root=$(cd "$(dirname "$0")/.." && pwd)
for tool in wrk nginx cargo; do
    if ! command -v "$tool" >/dev/null && [ ! -x "/usr/sbin/$tool" ]; then
        echo "missing $tool: apt-get install -y nginx-light wrk" >&2
        exit 1
    fi
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

echo "building translation-api (release)..." >&2
cargo build --quiet --release -p translation-api --manifest-path "$root/Cargo.toml"
target=${CARGO_TARGET_DIR:-$root/target}
[[ $target == /* ]] || target=$PWD/$target
api_bin=$target/release/translation-api

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# A loopback port nothing answers on (pure bash: a refused connect).
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

wait_ready() { # url
    for _ in $(seq 1 200); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "not answering: $1" >&2
    exit 1
}

version_body='{"version":"0.0.1","errors":[]}'
translate_body='{"phrase":"Lol","translation":"Kek","errors":[]}'

nginx_port=$(free_port)
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 2;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 100000000;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    server {
        listen 127.0.0.1:$nginx_port;
        location = /version { default_type application/json; return 200 '$version_body'; }
        location = /api/v1/translate { default_type application/json; return 200 '$translate_body'; }
    }
}
EOF
"$nginx_bin" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)

api_port=$(free_port)
APP_VERSION=0.0.1 "$api_bin" --listen "127.0.0.1:$api_port" --access-log=false >"$tmp/api.log" 2>&1 &
pids+=($!)
apilog_port=$(free_port)
APP_VERSION=0.0.1 "$api_bin" --listen "127.0.0.1:$apilog_port" > >(cat >/dev/null) 2>&1 &
pids+=($!)

declare -A port=([nginx]=$nginx_port [api]=$api_port [api-log]=$apilog_port)
declare -A pid=([nginx]=${pids[0]} [api]=${pids[1]} [api-log]=${pids[2]})

# CPU time (clock ticks) of a server: the process and its children (nginx workers).
cpu_ticks() {
    local total=0 p
    for p in "$1" $(ps --ppid "$1" -o pid= 2>/dev/null); do
        [ -r "/proc/$p/stat" ] || continue
        # Fields 14 and 15 (utime, stime), counted after the ")" of the command name.
        total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)
paths=(/version "/api/v1/translate?phrase=Lol")
for v in nginx api api-log; do
    wait_ready "http://127.0.0.1:${port[$v]}/version"
    # Same bytes from every variant.
    [ "$(curl -fsS "http://127.0.0.1:${port[$v]}/version")" = "$version_body" ] || { echo "$v: wrong /version body" >&2; exit 1; }
    [ "$(curl -fsS "http://127.0.0.1:${port[$v]}/api/v1/translate?phrase=Lol")" = "$translate_body" ] || { echo "$v: wrong translate body" >&2; exit 1; }
    wrk -t"$THREADS" -c"$CONNECTIONS" -d1s "http://127.0.0.1:${port[$v]}/version" >/dev/null # warm-up
done

results=$tmp/results
: >"$results"
variants=(nginx api api-log)
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds" >&2
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round so no variant always runs first.
    order=("${variants[@]:$(((round - 1) % 3))}" "${variants[@]:0:$(((round - 1) % 3))}")
    for path in "${paths[@]}"; do
        for v in "${order[@]}"; do
            before=$(cpu_ticks "${pid[$v]}")
            out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:${port[$v]}$path")
            after=$(cpu_ticks "${pid[$v]}")
            if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
                echo "$v $path: errors during the run:" >&2
                echo "$out" >&2
                exit 1
            fi
            rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
            requests=$(awk '/requests in/ {print $1}' <<<"$out")
            cpu_us=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$requests" 'BEGIN {print t * 1e6 / hz / n}')
            echo "$round $v $path $rps $cpu_us" >>"$results"
            printf 'round %d  %-8s %-30s %10.0f rps %6.1f us CPU/req\n' "$round" "$v" "$path" "$rps" "$cpu_us" >&2
        done
    done
done

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo
echo "| path | nginx rps | api, log off rps | ratio | api, log on rps | ratio |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for path in "${paths[@]}"; do
    med() { awk -v v="$1" -v p="$path" -v f="${2:-4}" '$2==v && $3==p {print $f}' "$results" | median; }
    ratio() { # median over rounds of variant/nginx
        awk -v v="$1" -v p="$path" '$3==p && $2=="nginx" {n[$1]=$4} $3==p && $2==v {x[$1]=$4}
            END {for (r in x) print x[r]/n[r]}' "$results" | median
    }
    printf '| `%s` | %.0f | %.0f | %.2f | %.0f | %.2f |\n' "$path" \
        "$(med nginx)" "$(med api)" "$(ratio api)" "$(med api-log)" "$(ratio api-log)"
done
echo
echo "| path | nginx CPU µs/req | api, log off | api, log on |"
echo "| --- | ---: | ---: | ---: |"
for path in "${paths[@]}"; do
    printf '| `%s` | %.1f | %.1f | %.1f |\n' "$path" "$(med nginx 5)" "$(med api 5)" "$(med api-log 5)"
done
echo
echo "medians of $ROUNDS rounds of wrk -t$THREADS -c$CONNECTIONS -d$DURATION; ratio = median of the per-round ratios to nginx;"
echo "CPU µs/req = the server's own CPU time (nginx: master + workers) per request served"
