#!/usr/bin/env bash
# Load benchmark of the public proxy (`/challenges/{slug}/…`), in one run:
#
#   1. direct to a small upstream (examples/echo_upstream.rs),
#   2. through base-server's proxy,
#   3. through nginx as a reverse proxy (Debian's nginx, keep-alive to the
#      upstream), for reference,
#
# each with wrk at the same threads/connections/duration, printing
# requests/s and p50/p99 latency, and the p50/p99 the proxies add over
# direct. Everything listens on loopback; the load tool, the upstream and
# the proxy share the machine's cores, as they would on a 2-core manager.
#
# base-server runs `master --orchestrator none` with a throw-away SQLite
# data dir; the challenge is registered through the admin API with its
# internal_base_url pointing at the upstream. Rate limiting is off for the
# run (loopback is exempt by default anyway) and the per-challenge cap is
# above the connection count.
#
# Target (issue 6): BASE throughput > nginx throughput in the same run, and
# p99 added latency < 1 ms at 64 connections. Results: docs/benchmarks.md.
#
# Usage: benches/proxy.sh
# Environment (all optional):
#   WRK_THREADS (2), WRK_CONNECTIONS (64), WRK_DURATION (10s)
#   NGINX_WORKERS (2)  nginx worker processes
#   BENCH_NO_BUILD=1   skip the release build
#   BENCH_ENFORCE=1    exit 1 when the target is missed
#   BASE_BIN           the base-server binary (target/release/base-server)
#   BASE_BIN_B         a second base-server binary, measured in the same run
#                      right after the first (an A/B row "BASE B proxy")
#   BASE_ENV_B         extra VAR=value words for that second one
#                      (e.g. "BASE_LISTEN_THREADS=1"); with BASE_ENV_B alone
#                      the same binary runs twice with and without them
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

THREADS="${WRK_THREADS:-2}"
CONNECTIONS="${WRK_CONNECTIONS:-64}"
DURATION="${WRK_DURATION:-10s}"
NGINX_WORKERS="${NGINX_WORKERS:-2}"
TOKEN="bench-admin-token-0123456789abcdef"

log() { printf '==> %s\n' "$*" >&2; }

WORK_DIR="$(mktemp -d -t base-bench-proxy.XXXXXX)"
PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK_DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() {
    local url="$1"
    for _ in $(seq 1 150); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    log "no answer from $url"
    return 1
}

for tool in wrk nginx curl python3; do
    if ! command -v "$tool" >/dev/null; then
        case "$tool" in
            wrk) log "installing wrk"; apt-get install -y wrk >/dev/null ;;
            nginx) log "installing nginx-light"; apt-get install -y nginx-light >/dev/null ;;
            *) log "$tool is required"; exit 1 ;;
        esac
    fi
done

if [[ "${BENCH_NO_BUILD:-}" != 1 ]]; then
    log "building base-server and echo_upstream (release)"
    cargo build --release -p base-server --bin base-server >&2
    cargo build --release -p base-workspace --example echo_upstream >&2
fi
BIN=target/release
BASE_BIN="${BASE_BIN:-$BIN/base-server}"
BASE_BIN_B="${BASE_BIN_B:-}"
BASE_ENV_B="${BASE_ENV_B:-}"
if [[ -n "$BASE_ENV_B" && -z "$BASE_BIN_B" ]]; then BASE_BIN_B="$BASE_BIN"; fi
UP_PORT="$(free_port)"
BASE_PORT="$(free_port)"
BASE_B_PORT="$(free_port)"
NGINX_PORT="$(free_port)"

log "upstream on 127.0.0.1:$UP_PORT"
"$BIN/examples/echo_upstream" "127.0.0.1:$UP_PORT" &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/hello"

# Starts a base-server master ($1 binary, $2 port, $3 data dir name, then
# extra VAR=value words) and registers the upstream as challenge "echo".
start_base() {
    local bin="$1" port="$2" dir="$3"
    shift 3
    log "base-server master ($bin${*:+ $*}) on 127.0.0.1:$port"
    env BASE_LISTEN="127.0.0.1:$port" \
        BASE_BROKER_ENABLED=false \
        BASE_ORCHESTRATOR=none \
        BASE_DATA_DIR="$WORK_DIR/$dir" \
        BASE_ADMIN_TOKEN="$TOKEN" \
        BASE_PROXY_RATE_LIMIT_PER_MINUTE=0 \
        BASE_PROXY_MAX_CONCURRENT_PER_CHALLENGE=4096 \
        BASE_LOG=warn \
        "$@" "$bin" master &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$port/health"
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:$port/v1/admin/challenges" \
        -H "X-Admin-Token: $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"slug\":\"echo\",\"name\":\"Echo\",\"image\":\"base.local/echo:1\",\"version\":\"1\",\"status\":\"active\",\"internal_base_url\":\"http://127.0.0.1:$UP_PORT\"}"
    wait_http "http://127.0.0.1:$port/challenges/echo/hello"
}

start_base "$BASE_BIN" "$BASE_PORT" base
if [[ -n "$BASE_BIN_B" ]]; then
    # shellcheck disable=SC2086 # BASE_ENV_B is a list of words on purpose
    start_base "$BASE_BIN_B" "$BASE_B_PORT" base-b $BASE_ENV_B
fi

log "nginx on 127.0.0.1:$NGINX_PORT ($NGINX_WORKERS workers)"
mkdir -p "$WORK_DIR/nginx"
cat > "$WORK_DIR/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
daemon off;
pid $WORK_DIR/nginx/nginx.pid;
error_log $WORK_DIR/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK_DIR/nginx/body;
    proxy_temp_path $WORK_DIR/nginx/proxy;
    fastcgi_temp_path $WORK_DIR/nginx/fastcgi;
    uwsgi_temp_path $WORK_DIR/nginx/uwsgi;
    scgi_temp_path $WORK_DIR/nginx/scgi;
    upstream challenge {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location /challenges/echo/ {
            proxy_pass http://challenge/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
nginx -c "$WORK_DIR/nginx/nginx.conf" &
PIDS+=($!)
wait_http "http://127.0.0.1:$NGINX_PORT/challenges/echo/hello"

# Runs wrk and prints "<req/s> <p50 ms> <p99 ms>".
measure() {
    local out
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$1")"
    printf '%s\n' "$out" >&2
    python3 - "$out" <<'PY'
import re, sys
text = sys.argv[1]
def ms(label):
    m = re.search(r"^\s*" + label + r"%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
print(f"{rps:.0f} {ms('50'):.3f} {ms('99'):.3f}")
PY
}

# A short warm-up of each path so pools and caches are filled.
WARM=("http://127.0.0.1:$UP_PORT/hello" "http://127.0.0.1:$BASE_PORT/challenges/echo/hello" "http://127.0.0.1:$NGINX_PORT/challenges/echo/hello")
if [[ -n "$BASE_BIN_B" ]]; then WARM+=("http://127.0.0.1:$BASE_B_PORT/challenges/echo/hello"); fi
for url in "${WARM[@]}"; do
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$url" >/dev/null
done

log "direct"
read -r D_RPS D_P50 D_P99 < <(measure "http://127.0.0.1:$UP_PORT/hello")
log "through BASE"
read -r B_RPS B_P50 B_P99 < <(measure "http://127.0.0.1:$BASE_PORT/challenges/echo/hello")
X_RPS=0 X_P50=0 X_P99=0
if [[ -n "$BASE_BIN_B" ]]; then
    log "through BASE B"
    read -r X_RPS X_P50 X_P99 < <(measure "http://127.0.0.1:$BASE_B_PORT/challenges/echo/hello")
fi
log "through nginx"
read -r N_RPS N_P50 N_P99 < <(measure "http://127.0.0.1:$NGINX_PORT/challenges/echo/hello")

status=0
python3 - "$D_RPS" "$D_P50" "$D_P99" "$B_RPS" "$B_P50" "$B_P99" "$N_RPS" "$N_P50" "$N_P99" "$CONNECTIONS" "$THREADS" "$DURATION" "$X_RPS" "$X_P50" "$X_P99" <<'PY' || status=$?
import sys
d, b, n, x = [tuple(map(float, sys.argv[i:i+3])) for i in (1, 4, 7, 13)]
conns, threads, dur = sys.argv[10:13]
print(f"wrk -t{threads} -c{conns} -d{dur} --latency, loopback, GET of a 25-byte body")
print("| path | requests/s | % of direct | p50 ms | p99 ms | added p50 ms | added p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|")
rows = [("direct", d), ("BASE proxy", b)] + ([("BASE B proxy", x)] if x[0] > 0 else []) + [("nginx proxy", n)]
for name, (rps, p50, p99) in rows:
    add50 = "" if name == "direct" else f"{p50 - d[1]:.3f}"
    add99 = "" if name == "direct" else f"{p99 - d[2]:.3f}"
    print(f"| {name} | {rps:.0f} | {100 * rps / d[0]:.0f} % | {p50:.3f} | {p99:.3f} | {add50} | {add99} |")
ok = b[0] > n[0] and (b[2] - d[2]) < 1.0
print(f"target (BASE > nginx, p99 added < 1 ms): {'met' if ok else 'MISSED'}")
if x[0] > 0:
    ok_b = x[0] > n[0] and (x[2] - d[2]) < 1.0
    print(f"BASE B / BASE: {x[0] / b[0]:.2f}; BASE / nginx: {b[0] / n[0]:.2f}; BASE B / nginx: {x[0] / n[0]:.2f}; target for B: {'met' if ok_b else 'MISSED'}")
sys.exit(0 if ok else 3)
PY
if [[ $status -ne 0 && "${BENCH_ENFORCE:-}" == 1 ]]; then exit 1; fi
exit 0
