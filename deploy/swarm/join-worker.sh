#!/usr/bin/env bash
# Enrols this machine as a BASE worker: writes /etc/docker/daemon.json for a
# CPU or GPU worker (merged with the existing file, which is backed up
# first), restarts Docker if asked, joins the swarm, and prints the command
# to label the node on the manager. docs/workers.md walks through it.
#
# Usage: join-worker.sh --cpu|--gpu --manager ADDR:PORT (--token TOKEN | --token-file FILE|-)
#                       [--apply] [--restart-docker] [--skip-join] [--docker-dir DIR]
#        join-worker.sh --cpu|--gpu --render [--docker-dir DIR]
#
#   --manager, --token   from the `docker swarm join --token <TOKEN> <ADDR:PORT>`
#                        line that `base master worker token` prints on the manager;
#                        --token-file reads it from a file (or stdin with -), keeping
#                        it out of this script's argv
#   --apply              act; without it nothing is written or run (dry run)
#   --restart-docker     restart dockerd (systemctl) after writing daemon.json;
#                        otherwise you are told to, and the join waits for you
#   --skip-join          write daemon.json only (no restart, no join)
#   --docker-dir DIR     where daemon.json lives (default /etc/docker; also
#                        BASE_DOCKER_CONFIG_DIR)
#   --render             print the merged daemon.json and exit
#
# GPU workers: one "NVIDIA-GPU=GPU-<uuid>" generic resource per GPU that
# `nvidia-smi --query-gpu=uuid --format=csv,noheader` lists, and nvidia as
# the default runtime. Needs python3 (JSON merging) and, for --gpu, nvidia-smi.
set -euo pipefail

die() { echo "join-worker: $*" >&2; exit 1; }
say() { echo "join-worker: $*" >&2; }

# The JSON BASE needs in daemon.json for a worker of kind $1 (cpu|gpu), merged
# into the existing file $2 (may be missing), printed on stdout. BASE's keys
# win; everything else in the existing file is kept: other runtimes, and
# generic resources of other kinds than NVIDIA-GPU.
render_daemon_json() {
    local kind="$1" existing="$2" gpus=""
    if [[ "$kind" == gpu ]]; then
        command -v nvidia-smi >/dev/null || die "nvidia-smi not found: install the NVIDIA driver first (docs/workers.md, GPU workers)"
        gpus="$(nvidia-smi --query-gpu=uuid --format=csv,noheader)" || die "nvidia-smi --query-gpu=uuid failed"
    fi
    KIND="$kind" GPUS="$gpus" EXISTING="$existing" python3 - <<'PY'
import json, os, re, sys

def fail(msg):
    sys.stderr.write("join-worker: " + msg + "\n")
    sys.exit(1)

kind, existing = os.environ["KIND"], os.environ["EXISTING"]
conf = {}
if existing and os.path.exists(existing):
    try:
        with open(existing) as f:
            text = f.read()
        conf = json.loads(text) if text.strip() else {}
    except (OSError, ValueError) as e:
        fail(f"cannot read {existing} as JSON ({e}); fix or move it first")
    if not isinstance(conf, dict):
        fail(f"{existing} is not a JSON object; fix or move it first")

conf["log-driver"] = "json-file"
log_opts = conf.get("log-opts") if isinstance(conf.get("log-opts"), dict) else {}
log_opts.update({"max-size": "50m", "max-file": "3"})
conf["log-opts"] = log_opts
# Swarm mode refuses to start with live-restore on (docs/workers.md).
if conf.get("live-restore") is True:
    sys.stderr.write("join-worker: live-restore was on; swarm mode refuses it, turning it off\n")
conf["live-restore"] = False
conf["no-new-privileges"] = True

if kind == "gpu":
    uuids = [l.strip() for l in os.environ["GPUS"].splitlines() if l.strip()]
    if not uuids:
        fail("nvidia-smi lists no GPU; a GPU worker needs at least one")
    for u in uuids:
        if not re.fullmatch(r"GPU-[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}", u):
            fail(f"nvidia-smi printed {u!r}, not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")
    others = [r for r in conf.get("node-generic-resources", []) if not str(r).startswith("NVIDIA-GPU=")]
    conf["node-generic-resources"] = others + ["NVIDIA-GPU=" + u for u in uuids]
    runtimes = conf.get("runtimes") if isinstance(conf.get("runtimes"), dict) else {}
    runtimes["nvidia"] = {"path": "nvidia-container-runtime", "runtimeArgs": []}
    conf["runtimes"] = runtimes
    conf["default-runtime"] = "nvidia"

json.dump(conf, sys.stdout, indent=2, sort_keys=True)
sys.stdout.write("\n")
PY
}

kind="" manager="" token="" token_file="" apply=0 restart=0 skip_join=0 render=0
docker_dir="${BASE_DOCKER_CONFIG_DIR:-/etc/docker}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu) kind=cpu ;;
        --gpu) kind=gpu ;;
        --manager) [[ $# -ge 2 ]] || die "--manager needs ADDR:PORT"; manager="$2"; shift ;;
        --token) [[ $# -ge 2 ]] || die "--token needs a value"; token="$2"; shift ;;
        --token-file) [[ $# -ge 2 ]] || die "--token-file needs a path"; token_file="$2"; shift ;;
        --apply) apply=1 ;;
        --restart-docker) restart=1 ;;
        --skip-join) skip_join=1 ;;
        --render) render=1 ;;
        --docker-dir) [[ $# -ge 2 ]] || die "--docker-dir needs a path"; docker_dir="$2"; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done
[[ -n "$kind" ]] || die "say which kind of worker: --cpu or --gpu"
command -v python3 >/dev/null || die "python3 is needed to merge daemon.json"
target="$docker_dir/daemon.json"

if [[ "$render" -eq 1 ]]; then
    render_daemon_json "$kind" "$target"
    exit 0
fi

if [[ "$skip_join" -eq 0 ]]; then
    if [[ -n "$token_file" ]]; then
        [[ -z "$token" ]] || die "give --token or --token-file, not both"
        if [[ "$token_file" == - ]]; then read -r token || true; else token="$(head -n1 "$token_file")" || die "cannot read $token_file"; fi
    fi
    [[ -n "$token" ]] || die "the join token is missing: --token or --token-file (from \`base master worker token\` on the manager)"
    [[ "$token" =~ ^SWMTKN-1-[0-9a-z]+-[0-9a-z]+$ ]] || die "the join token does not look like a swarm token (SWMTKN-1-…)"
    [[ -n "$manager" ]] || die "the manager address is missing: --manager ADDR:PORT (the last word of the join command)"
    [[ "$manager" =~ ^[^[:space:]]+:[0-9]+$ ]] || die "--manager '$manager' is not ADDR:PORT"
fi

rendered="$(render_daemon_json "$kind" "$target")"
changed=1
if [[ -f "$target" ]] && python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])) == json.loads(sys.argv[2]) else 1)' "$target" "$rendered" 2>/dev/null; then
    changed=0
fi

if [[ "$apply" -eq 0 ]]; then
    say "dry run (nothing written; --apply to act). Would:"
    if [[ "$changed" -eq 1 ]]; then
        [[ -f "$target" ]] && say "  back up $target to $target.bak-<timestamp>"
        say "  write $target:"
        echo "$rendered"
        say "  $([[ "$restart" -eq 1 ]] && echo "restart docker (systemctl restart docker)" || echo "ask you to restart docker")"
    else
        say "  leave $target as it is (already what a $kind worker needs)"
    fi
    [[ "$skip_join" -eq 1 ]] || say "  run: docker swarm join --token <the token> $manager"
    exit 0
fi

if [[ "$changed" -eq 1 ]]; then
    mkdir -p "$docker_dir"
    if [[ -f "$target" ]]; then
        backup="$target.bak-$(date -u +%Y%m%dT%H%M%SZ)"
        cp -p "$target" "$backup"
        say "backed up $target to $backup"
    fi
    # Written beside the target and renamed: never a half-written daemon.json.
    tmp="$(mktemp "$docker_dir/.daemon.json.XXXXXX")"
    printf '%s\n' "$rendered" >"$tmp"
    chmod 0644 "$tmp"
    mv "$tmp" "$target"
    say "wrote $target"
else
    say "$target already has what a $kind worker needs"
fi
[[ "$skip_join" -eq 0 ]] || exit 0

if [[ "$changed" -eq 1 ]]; then
    if [[ "$restart" -eq 1 ]]; then
        say "restarting docker"
        systemctl restart docker || die "restarting docker failed: journalctl -u docker says why (the previous daemon.json is in $backup if there was one)"
    else
        say "restart docker now (sudo systemctl restart docker) so it reads $target, then run this again with --apply to join"
        exit 0
    fi
fi
if [[ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" == active ]]; then
    say "this node is already in a swarm; not joining again"
else
    # The token goes to docker through its argv like `docker swarm join` itself;
    # it is never echoed here.
    docker swarm join --token "$token" "$manager" || die "docker swarm join failed (is $manager reachable on 2377/tcp?)"
fi
node="$(docker info --format '{{.Swarm.NodeID}}' 2>/dev/null || true)"
say "joined. On the manager, run:"
echo "base master worker label ${node:-<NODE>} --workload $kind"
