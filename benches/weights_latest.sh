#!/usr/bin/env bash
# Load benchmark of GET /v1/weights/latest (the route every validator's
# submitter polls).
#
# Builds base-server in release, starts `base-server dev` on a free loopback
# port with a throw-away BASE_DATA_DIR and a 5 s epoch, waits for the first
# vector (HTTP 200), installs wrk from Debian's packages if it is missing,
# runs wrk against the route, then reads the master's peak RSS (VmHWM of the
# master process only; the dev challenges are separate processes) and prints
# a summary: requests/s, p50/p99 latency, VmHWM, body size. The server is
# stopped with SIGTERM (so dev mode stops its challenge processes) and the
# temp dir removed on every exit path.
#
# Target (issue): >= 50,000 requests/s with 64 connections on a 2-core
# machine, master peak memory under 50 MB. Results: docs/benchmarks.md.
#
# Usage: benches/weights_latest.sh
# Environment (all optional):
#   WRK_THREADS (2), WRK_CONNECTIONS (64), WRK_DURATION (15s)
#   BENCH_PORT       port to listen on (default: a free one)
#   BENCH_NO_BUILD=1 skip `cargo build --release -p base-server`
#   BENCH_ENFORCE=1  exit 1 when the target is missed
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

THREADS="${WRK_THREADS:-2}"
CONNECTIONS="${WRK_CONNECTIONS:-64}"
DURATION="${WRK_DURATION:-15s}"
TARGET_RPS=50000
TARGET_MB=50

log() { printf '==> %s\n' "$*" >&2; }

WORK_DIR="$(mktemp -d -t base-bench-weights.XXXXXX)"
SERVER_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        log "stopping base-server (pid $SERVER_PID)"
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        # Dev mode stops its challenge processes before exiting; give it
        # time, then insist.
        for _ in $(seq 1 150); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            log "base-server did not exit within 30 s; sending SIGKILL"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK_DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    else
        # No python: try ports until one refuses connections.
        local p
        for _ in $(seq 1 50); do
            p=$((20000 + RANDOM % 40000))
            if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
                echo "$p"
                return 0
            fi
        done
        return 1
    fi
}

ensure_wrk() {
    command -v wrk >/dev/null 2>&1 && return 0
    log "wrk not found; installing it from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y wrk >/dev/null; then
        apt-get update >/dev/null
        apt-get install -y wrk >/dev/null
    fi
    command -v wrk >/dev/null 2>&1
}

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    log "building base-server (release)"
    cargo build --release -p base-server
fi
SERVER_BIN="target/release/base-server"
[[ -x "$SERVER_BIN" ]] || { echo "error: $SERVER_BIN not found" >&2; exit 1; }

ensure_wrk

PORT="${BENCH_PORT:-$(free_port)}"
URL="http://127.0.0.1:${PORT}/v1/weights/latest"
SERVER_LOG="$WORK_DIR/server.log"

log "starting base-server dev on 127.0.0.1:$PORT (data dir $WORK_DIR/data)"
BASE_DATA_DIR="$WORK_DIR/data" BASE_EPOCH_SECONDS=5 \
    "$SERVER_BIN" dev --listen "127.0.0.1:$PORT" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

log "waiting for the first weights vector"
ready=0
for _ in $(seq 1 240); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "error: base-server exited during start-up; its log:" >&2
        cat "$SERVER_LOG" >&2
        exit 1
    fi
    code="$(curl -s -o /dev/null -w '%{http_code}' "$URL" || true)"
    if [[ "$code" == 200 ]]; then
        ready=1
        break
    fi
    sleep 0.5
done
if [[ "$ready" != 1 ]]; then
    echo "error: $URL did not answer 200 within 120 s; server log:" >&2
    tail -n 50 "$SERVER_LOG" >&2
    exit 1
fi

BODY_BYTES="$(curl -s "$URL" | wc -c | tr -d ' ')"
RSS_BEFORE_KB="$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status")"
# CPU time charged to the master (user + system, all threads, in clock
# ticks). Loopback TCP work is charged to whichever side the kernel runs it
# for, so this is a rough figure that moves with scheduling; together with
# the load average it tells whether a slow run was the machine's doing.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
CPU_BEFORE="$(cpu_ticks)"

log "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $URL"
WRK_OUT="$WORK_DIR/wrk.txt"
wrk "-t$THREADS" "-c$CONNECTIONS" "-d$DURATION" --latency "$URL" | tee "$WRK_OUT" >&2

# Right after the run, before anything else touches the server.
HWM_KB="$(awk '/^VmHWM:/ {print $2}' "/proc/$SERVER_PID/status")"
RSS_AFTER_KB="$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status")"
CPU_AFTER="$(cpu_ticks)"

RPS="$(awk '/^Requests\/sec:/ {print $2}' "$WRK_OUT")"
P50="$(awk '$1 == "50%" {print $2}' "$WRK_OUT")"
P99="$(awk '$1 == "99%" {print $2}' "$WRK_OUT")"
TOTAL="$(awk '/requests in/ {print $1}' "$WRK_OUT")"
NON_2XX="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$WRK_OUT")"
SOCKET_ERRORS="$(grep -E '^ *Socket errors:' "$WRK_OUT" | sed 's/^ *//' || true)"
mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb / 1024 }'; }
CPU_SECONDS="$(awk -v a="$CPU_BEFORE" -v b="$CPU_AFTER" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.2f", (b - a) / hz }')"
CPU_US_PER_REQ="$(awk -v s="$CPU_SECONDS" -v n="${TOTAL:-0}" \
    'BEGIN { if (n > 0) printf "%.1f", s * 1e6 / n; else print "?" }')"

verdict=PASS
awk -v r="$RPS" -v t="$TARGET_RPS" 'BEGIN { exit !(r >= t) }' || verdict=MISS
awk -v kb="$HWM_KB" -v t="$TARGET_MB" 'BEGIN { exit !(kb / 1024 < t) }' || verdict=MISS

cat <<EOF

GET /v1/weights/latest — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, wrk and server sharing them
  command          wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency $URL
  requests         ${TOTAL:-?} (non-2xx: ${NON_2XX:-0})${SOCKET_ERRORS:+; $SOCKET_ERRORS}
  requests/s       $RPS   (target >= $TARGET_RPS)
  latency p50      $P50
  latency p99      $P99
  master VmHWM     $(mb "$HWM_KB") MB   (target < $TARGET_MB MB; VmRSS $(mb "$RSS_BEFORE_KB") MB before, $(mb "$RSS_AFTER_KB") MB after)
  body size        $BODY_BYTES bytes
  master CPU       ${CPU_SECONDS} s during the run (~${CPU_US_PER_REQ} µs per request, loopback TCP included)
  load before run  $LOAD_BEFORE (1/5/15 min; > $(nproc) means other work shared the cores)
  verdict          $verdict
EOF

if [[ "$verdict" != PASS && "${BENCH_ENFORCE:-0}" == 1 ]]; then
    exit 1
fi
