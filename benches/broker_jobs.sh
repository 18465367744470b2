#!/usr/bin/env bash
# Broker benchmark (issue 5): N trivial jobs submitted at once through the
# broker (base-server master with its broker, Swarm orchestrator, SQLite
# store) against the same jobs created straight through the Docker Engine
# API by a minimal script (benches/swarm_jobs_direct.py), measured side by
# side in one run, ROUNDS times alternating. Also samples the broker's
# thread count, to show that jobs in flight do not cost a thread each.
#
# Needs what scripts/test.sh sets up: an active single-node swarm, the node
# labelled base.workload=cpu, and the image base.local/quiz-challenge:0.1.0
# (scripts/build-example-image.sh).
#
#   benches/broker_jobs.sh [jobs=200] [rounds=2]
set -euo pipefail
cd "$(dirname "$0")/.."

jobs="${1:-200}"
rounds="${2:-2}"
image="base.local/quiz-challenge:0.1.0"

docker info --format '{{.Swarm.LocalNodeState}}' | grep -qx active || {
    echo "needs an active swarm (see scripts/test.sh)" >&2
    exit 2
}
docker image inspect "$image" >/dev/null

cargo build --release --quiet -p base-server --bin base-server
cargo build --release --quiet --example broker_load

tmp="$(mktemp -d)"
admin="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
master_pid=""
cleanup() {
    [[ -n "$master_pid" ]] && kill "$master_pid" 2>/dev/null && wait "$master_pid" 2>/dev/null
    docker service ls -q --filter label=base.component=bench-direct | xargs -r docker service rm >/dev/null
    docker service ls -q --filter label=base.component=job | xargs -r docker service rm >/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

env -i PATH="$PATH" HOME="$HOME" \
    BASE_DATA_DIR="$tmp" \
    BASE_DATABASE_URL="sqlite://$tmp/base.sqlite3" \
    BASE_ADMIN_TOKEN="$admin" \
    BASE_SECRET_KEY="$(head -c32 /dev/urandom | od -An -tx1 | tr -d " \n")" \
    BASE_WEIGHTS_KEY="0x$(head -c32 /dev/urandom | od -An -tx1 | tr -d " \n")" \
    BASE_LISTEN=127.0.0.1:18190 \
    BASE_BROKER_LISTEN=127.0.0.1:18192 \
    BASE_BROKER_ALLOWED_IMAGES=base.local/ \
    BASE_ORCHESTRATOR=swarm \
    BASE_LOG=warn \
    target/release/base-server master >"$tmp/master.log" 2>&1 &
master_pid=$!
for _ in $(seq 100); do
    curl -fsS http://127.0.0.1:18192/health >/dev/null 2>&1 && break
    sleep 0.2
done

created="$(curl -fsS -X POST http://127.0.0.1:18190/v1/admin/challenges \
    -H "X-Admin-Token: $admin" -H 'Content-Type: application/json' \
    -d "{\"slug\":\"bench\",\"name\":\"Bench\",\"image\":\"$image\",\"version\":\"0.1.0\"}")"
python3 -c 'import json,sys; print(json.load(sys.stdin)["docker_broker_token"])' <<<"$created" >"$tmp/token"

# Peak thread count of the broker process while jobs are in flight.
sample_threads() {
    local peak=0 t
    while kill -0 "$master_pid" 2>/dev/null; do
        t="$(awk '/^Threads:/ {print $2}' "/proc/$master_pid/status" 2>/dev/null || echo 0)"
        ((t > peak)) && peak=$t && echo "$peak" >"$tmp/threads"
        sleep 0.2
    done
}

echo "machine: $(nproc) cores; docker $(docker version --format '{{.Server.Version}}'); $jobs jobs per run"
for round in $(seq "$rounds"); do
    python3 benches/swarm_jobs_direct.py "$jobs" "$image" exit 0
    echo 0 >"$tmp/threads"
    sample_threads &
    sampler=$!
    BASE_BROKER_URL=http://127.0.0.1:18192 BASE_BROKER_SLUG=bench \
        BASE_BROKER_TOKEN_FILE="$tmp/token" BASE_JOB_IMAGE="$image" \
        target/release/examples/broker_load "$jobs" exit 0
    kill "$sampler" 2>/dev/null || true
    echo "{\"round\": $round, \"broker_peak_threads\": $(cat "$tmp/threads"), \"broker_rss_kb\": $(awk '/^VmHWM:/ {print $2}' "/proc/$master_pid/status")}"
done
left="$(docker service ls -q --filter label=base.component=job | wc -l)"
echo "{\"job_services_left\": $left}"
