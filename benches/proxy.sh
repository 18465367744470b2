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
UP_PID=$!
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
        BASE_SECRET_KEY="$(head -c32 /dev/urandom | od -An -tx1 | tr -d " \n")" \
        BASE_WEIGHTS_KEY="0x$(head -c32 /dev/urandom | od -An -tx1 | tr -d " \n")" \
        BASE_PROXY_RATE_LIMIT_PER_MINUTE=0 \
        BASE_PROXY_MAX_CONCURRENT_PER_CHALLENGE=4096 \
        BASE_LOG=warn \
        "$@" "$bin" master &
    PIDS+=($!)
    LAST_BASE_PID=$!
    wait_http "http://127.0.0.1:$port/health"
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:$port/v1/admin/challenges" \
        -H "X-Admin-Token: $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"slug\":\"echo\",\"name\":\"Echo\",\"image\":\"base.local/echo:1\",\"version\":\"1\",\"status\":\"active\",\"internal_base_url\":\"http://127.0.0.1:$UP_PORT\"}"
    wait_http "http://127.0.0.1:$port/challenges/echo/hello"
}

start_base "$BASE_BIN" "$BASE_PORT" base
BASE_PID=$LAST_BASE_PID
BASE_B_PID=
if [[ -n "$BASE_BIN_B" ]]; then
    # shellcheck disable=SC2086 # BASE_ENV_B is a list of words on purpose
    start_base "$BASE_BIN_B" "$BASE_B_PORT" base-b $BASE_ENV_B
    BASE_B_PID=$LAST_BASE_PID
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
NGINX_PID=$!
wait_http "http://127.0.0.1:$NGINX_PORT/challenges/echo/hello"

# CPU time (clock ticks, user and system) and context switches so far of
# the processes $@ with their threads and child processes (nginx's
# workers): "<user> <system> <switches>".
cpu_use() {
    python3 - "$@" <<'PY'
import os, sys
pids, todo = set(), list(sys.argv[1:])
while todo:
    p = todo.pop()
    if p in pids:
        continue
    pids.add(p)
    try:
        for t in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{t}/children") as f:
                todo.extend(f.read().split())
    except OSError:
        pass
user = system = switches = 0
for p in pids:
    try:
        fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        user += int(fields[11]); system += int(fields[12])
        for t in os.listdir(f"/proc/{p}/task"):
            for line in open(f"/proc/{p}/task/{t}/status"):
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[-1])
    except OSError:
        continue
print(user, system, switches)
PY
}

# Runs wrk against $1 and prints "<req/s> <p50 ms> <p99 ms> <proxy us/req
# user> <system> <switches/req> <upstream us/req>", the CPU figures of
# the proxy process $2 (none for direct) and of the upstream.
measure() {
    local out before_p before_u after_p after_u
    before_p="$(cpu_use ${2:-})"
    before_u="$(cpu_use "$UP_PID")"
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$1")"
    after_p="$(cpu_use ${2:-})"
    after_u="$(cpu_use "$UP_PID")"
    printf '%s\n' "$out" >&2
    python3 - "$out" "$before_p" "$after_p" "$before_u" "$after_u" "$(getconf CLK_TCK)" <<'PY'
import re, sys
text = sys.argv[1]
def ms(label):
    m = re.search(r"^\s*" + label + r"%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
total = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
(bp, ap, bu, au), tick = [list(map(int, a.split())) for a in sys.argv[2:6]], int(sys.argv[6])
per = lambda ticks: 1e6 * ticks / tick / max(total, 1)
print(f"{rps:.0f} {ms('50'):.3f} {ms('99'):.3f} {per(ap[0] - bp[0]):.1f} {per(ap[1] - bp[1]):.1f} "
      f"{(ap[2] - bp[2]) / max(total, 1):.2f} {per(au[0] + au[1] - bu[0] - bu[1]):.1f}")
PY
}

# A short warm-up of each path so pools and caches are filled.
WARM=("http://127.0.0.1:$UP_PORT/hello" "http://127.0.0.1:$BASE_PORT/challenges/echo/hello" "http://127.0.0.1:$NGINX_PORT/challenges/echo/hello")
if [[ -n "$BASE_BIN_B" ]]; then WARM+=("http://127.0.0.1:$BASE_B_PORT/challenges/echo/hello"); fi
for url in "${WARM[@]}"; do
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$url" >/dev/null
done

log "direct"
read -r D_RPS D_P50 D_P99 D_U D_S D_C D_UP < <(measure "http://127.0.0.1:$UP_PORT/hello")
log "through BASE"
read -r B_RPS B_P50 B_P99 B_U B_S B_C B_UP < <(measure "http://127.0.0.1:$BASE_PORT/challenges/echo/hello" "$BASE_PID")
X_RPS=0 X_P50=0 X_P99=0 X_U=0 X_S=0 X_C=0 X_UP=0
if [[ -n "$BASE_BIN_B" ]]; then
    log "through BASE B"
    read -r X_RPS X_P50 X_P99 X_U X_S X_C X_UP < <(measure "http://127.0.0.1:$BASE_B_PORT/challenges/echo/hello" "$BASE_B_PID")
fi
log "through nginx"
read -r N_RPS N_P50 N_P99 N_U N_S N_C N_UP < <(measure "http://127.0.0.1:$NGINX_PORT/challenges/echo/hello" "$NGINX_PID")

status=0
python3 - "$CONNECTIONS" "$THREADS" "$DURATION" \
    "$D_RPS" "$D_P50" "$D_P99" "$D_U" "$D_S" "$D_C" "$D_UP" \
    "$B_RPS" "$B_P50" "$B_P99" "$B_U" "$B_S" "$B_C" "$B_UP" \
    "$N_RPS" "$N_P50" "$N_P99" "$N_U" "$N_S" "$N_C" "$N_UP" \
    "$X_RPS" "$X_P50" "$X_P99" "$X_U" "$X_S" "$X_C" "$X_UP" <<'PY' || status=$?
import sys
conns, threads, dur = sys.argv[1:4]
d, b, n, x = [tuple(map(float, sys.argv[i:i + 7])) for i in (4, 11, 18, 25)]
print(f"wrk -t{threads} -c{conns} -d{dur} --latency, loopback, GET of a 25-byte body")
print("| path | requests/s | % of direct | p50 ms | p99 ms | added p50 ms | added p99 ms "
      "| proxy CPU µs/req (user + sys) | proxy switches/req | upstream CPU µs/req |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
rows = [("direct", d), ("BASE proxy", b)] + ([("BASE B proxy", x)] if x[0] > 0 else []) + [("nginx proxy", n)]
for name, (rps, p50, p99, user, system, switches, up) in rows:
    add50 = "" if name == "direct" else f"{p50 - d[1]:.3f}"
    add99 = "" if name == "direct" else f"{p99 - d[2]:.3f}"
    cpu = "" if name == "direct" else f"{user + system:.1f} ({user:.1f} + {system:.1f})"
    sw = "" if name == "direct" else f"{switches:.2f}"
    print(f"| {name} | {rps:.0f} | {100 * rps / d[0]:.0f} % | {p50:.3f} | {p99:.3f} | {add50} | {add99} "
          f"| {cpu} | {sw} | {up:.1f} |")
ok = b[0] > n[0] and (b[2] - d[2]) < 1.0
print(f"target (BASE > nginx, p99 added < 1 ms): {'met' if ok else 'MISSED'}")
if x[0] > 0:
    ok_b = x[0] > n[0] and (x[2] - d[2]) < 1.0
    print(f"BASE B / BASE: {x[0] / b[0]:.2f}; BASE / nginx: {b[0] / n[0]:.2f}; BASE B / nginx: {x[0] / n[0]:.2f}; target for B: {'met' if ok_b else 'MISSED'}")
sys.exit(0 if ok else 3)
PY
if [[ $status -ne 0 && "${BENCH_ENFORCE:-}" == 1 ]]; then exit 1; fi
exit 0
