#!/usr/bin/env bash
# The one test command (README, .ci/run): sets up what the tests need —
# a throw-away PostgreSQL cluster on loopback, a single-node Docker Swarm
# on this machine's engine (initialised only if it is not one already, and
# left again afterwards), the node label jobs are placed by, and the
# example challenge image built locally — runs every test including the
# infrastructure-marked ones, and tears down whatever it started, even on
# failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

cleanup_steps=()
cleanup() {
  local i
  for ((i=${#cleanup_steps[@]}-1; i>=0; i--)); do
    eval "${cleanup_steps[$i]}" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT INT TERM

log() { printf '==> %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# --- PostgreSQL ---------------------------------------------------------
start_postgres() {
  local pgbin
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$pgbin" ]; then
    log "installing PostgreSQL from Debian's packages"
    if [ "$(id -u)" -ne 0 ]; then
      echo "PostgreSQL is not installed and this is not root: install postgresql or set BASE_TEST_POSTGRES_URL" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  local dir port as
  dir=$(mktemp -d /tmp/base-test-pg.XXXXXX)
  port=$(free_port)
  as=()
  if [ "$(id -u)" -eq 0 ]; then
    # PostgreSQL refuses to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  cleanup_steps+=("rm -rf '$dir'")
  "${as[@]}" "$pgbin/initdb" -D "$dir/data" -A trust -U base --no-sync >/dev/null
  "${as[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null
  cleanup_steps+=("${as[*]} '$pgbin/pg_ctl' -D '$dir/data' -m immediate stop")
  export BASE_TEST_POSTGRES_URL="postgres://base@127.0.0.1:$port/postgres"
  log "PostgreSQL for tests on 127.0.0.1:$port"
}

if [ -z "${BASE_TEST_POSTGRES_URL:-}" ]; then
  start_postgres
else
  log "using PostgreSQL at BASE_TEST_POSTGRES_URL"
fi

# --- Docker Swarm -------------------------------------------------------
setup_swarm() {
  if ! docker info >/dev/null 2>&1; then
    echo "the tests need a running Docker engine (docker info failed)" >&2
    exit 1
  fi
  local state node prev
  state=$(docker info --format '{{.Swarm.LocalNodeState}}')
  if [ "$state" != "active" ]; then
    log "initialising a single-node Docker Swarm (left again afterwards)"
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    cleanup_steps+=("docker swarm leave --force")
  else
    log "using the existing Docker Swarm"
  fi
  node=$(docker info --format '{{.Swarm.NodeID}}')
  prev=$(docker node inspect "$node" --format '{{ index .Spec.Labels "base.workload" }}' 2>/dev/null || true)
  docker node update --label-add base.workload=cpu "$node" >/dev/null
  if [ -z "$prev" ] || [ "$prev" = "<no value>" ]; then
    cleanup_steps+=("docker node update --label-rm base.workload '$node'")
  else
    cleanup_steps+=("docker node update --label-add 'base.workload=$prev' '$node'")
  fi
  log "building the example challenge image"
  scripts/build-example-image.sh >/dev/null
  log "building the static job shim (writable mounts)"
  BASE_TEST_JOB_SHIM="$(scripts/build-shim.sh)"
  export BASE_TEST_JOB_SHIM
}

if [ "${BASE_TEST_SKIP_SWARM:-}" = "1" ]; then
  log "BASE_TEST_SKIP_SWARM=1: not touching Docker (tests that need it will fail)"
else
  setup_swarm
fi

log "running the test suite (including infrastructure tests)"
cargo nextest run --workspace --all-targets --run-ignored all --no-fail-fast "$@"
