#!/usr/bin/env bash
# BASE: the node firewall for evaluation jobs with `network: default`
# (docs/swarm.md, "Job networks"; threat model in
# docs/security/broker-network.md).
#
# A Swarm job that joins no network runs on Docker's default bridge
# (docker0): it can reach the internet, but by Docker's defaults also every
# other container on that bridge — other miners' jobs — and every port the
# node itself listens on, the control plane included (master API, broker,
# PostgreSQL). This script closes both, on every node that runs jobs:
#
#   * jobs on the bridge cannot reach each other (what Docker's `icc=false`
#     does, without restarting the engine);
#   * traffic from the bridge to the node's own control-plane ports is
#     refused (a TCP reset, so a job fails fast instead of hanging);
#   * forwarded traffic from the bridge to the control-plane ports of the
#     addresses in BASE_CONTROL_PLANE_ADDRS (the managers, on other nodes)
#     is refused too.
#
# Challenges are not on docker0 (they use the base_challenges overlay and
# docker_gwbridge), so they keep reaching the broker.
#
# Usage: base-job-firewall.sh apply | remove | show
# Settings (environment):
#   BASE_JOB_BRIDGE            the bridge jobs run on                (docker0)
#   BASE_CONTROL_PLANE_PORTS   comma-separated TCP ports to refuse
#                              (18080,18082,5432,2375,2376,2377)
#   BASE_CONTROL_PLANE_ADDRS   comma-separated addresses/CIDRs of the
#                              control plane on other nodes          (none)
#   BASE_JOB_FIREWALL_CHAIN    prefix of the chains this script owns (BASE-JOBS)
#   IPTABLES                   the iptables binary Docker uses       (iptables)
#
# `apply` is idempotent (the chains are rebuilt, the jumps added once) and
# `remove` takes out exactly what `apply` added. Install on every node with
# deploy/swarm/base-job-firewall.service.
set -euo pipefail

bridge="${BASE_JOB_BRIDGE:-docker0}"
ports="${BASE_CONTROL_PLANE_PORTS:-18080,18082,5432,2375,2376,2377}"
addrs="${BASE_CONTROL_PLANE_ADDRS:-}"
chain="${BASE_JOB_FIREWALL_CHAIN:-BASE-JOBS}"
ipt="${IPTABLES:-iptables}"
in_chain="${chain}-IN"
fwd_chain="${chain}-FWD"

die() {
  echo "base-job-firewall: $*" >&2
  exit 1
}

# Names and values end up in iptables' argv: refuse anything unexpected
# rather than pass it on.
[[ "$bridge" =~ ^[A-Za-z0-9_.-]{1,15}$ ]] || die "BASE_JOB_BRIDGE '$bridge' is not an interface name"
[[ "$chain" =~ ^[A-Za-z0-9_-]{1,24}$ ]] || die "BASE_JOB_FIREWALL_CHAIN '$chain' must be 1-24 of [A-Za-z0-9_-]"
[[ "$ports" =~ ^[0-9]{1,5}(,[0-9]{1,5}){0,14}$ ]] || die "BASE_CONTROL_PLANE_PORTS '$ports' must be 1-15 comma-separated ports"
[[ -z "$addrs" || "$addrs" =~ ^[0-9A-Fa-f.:/]+(,[0-9A-Fa-f.:/]+)*$ ]] || die "BASE_CONTROL_PLANE_ADDRS '$addrs' must be comma-separated addresses or CIDRs"

# The jumps into BASE's chains: from INPUT (to this node) and from
# DOCKER-USER (forwarded; Docker evaluates it before its own rules and
# never flushes it).
jumps=(
  "INPUT -i $bridge -j $in_chain"
  "DOCKER-USER -i $bridge -j $fwd_chain"
)

remove() {
  local j
  for j in "${jumps[@]}"; do
    # shellcheck disable=SC2086 # the rule is split into iptables' words on purpose
    while "$ipt" -w -C $j 2>/dev/null; do "$ipt" -w -D $j; done
  done
  local c
  for c in "$in_chain" "$fwd_chain"; do
    if "$ipt" -w -n -L "$c" >/dev/null 2>&1; then
      "$ipt" -w -F "$c"
      "$ipt" -w -X "$c"
    fi
  done
}

apply() {
  "$ipt" -w -n -L DOCKER-USER >/dev/null 2>&1 ||
    die "no DOCKER-USER chain: start Docker first (it creates the chain)"
  local c
  for c in "$in_chain" "$fwd_chain"; do
    "$ipt" -w -n -L "$c" >/dev/null 2>&1 || "$ipt" -w -N "$c"
    "$ipt" -w -F "$c"
  done
  # To this node: the control-plane ports are refused.
  "$ipt" -w -A "$in_chain" -p tcp -m multiport --dports "$ports" -j REJECT --reject-with tcp-reset
  "$ipt" -w -A "$in_chain" -j RETURN
  # Between jobs on the bridge: nothing.
  "$ipt" -w -A "$fwd_chain" -o "$bridge" -j DROP
  # To the control plane on other nodes.
  if [ -n "$addrs" ]; then
    local a
    IFS=, read -r -a list <<<"$addrs"
    for a in "${list[@]}"; do
      "$ipt" -w -A "$fwd_chain" -d "$a" -p tcp -m multiport --dports "$ports" -j REJECT --reject-with tcp-reset
    done
  fi
  "$ipt" -w -A "$fwd_chain" -j RETURN
  local j
  for j in "${jumps[@]}"; do
    # shellcheck disable=SC2086
    "$ipt" -w -C $j 2>/dev/null || "$ipt" -w -I ${j%% *} 1 ${j#* }
  done
}

show() {
  "$ipt" -w -S "$in_chain" 2>/dev/null || true
  "$ipt" -w -S "$fwd_chain" 2>/dev/null || true
}

case "${1:-}" in
  apply) apply ;;
  remove) remove ;;
  show) show ;;
  *) die "usage: base-job-firewall.sh apply | remove | show" ;;
esac
