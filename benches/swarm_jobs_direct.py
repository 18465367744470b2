#!/usr/bin/env python3
"""Baseline for the broker benchmark: the same trivial jobs created straight
through the Docker Engine API, with nothing in between — a minimal script,
standard library only (a thread per job, HTTP over the engine's unix socket).

For each job: create a replicated-job service (the same image, command,
constraint and limits the broker sets), poll its task every 100 ms until it
completes, remove the service. Prints one JSON line like examples/broker_load.

    python3 benches/swarm_jobs_direct.py 200 base.local/quiz-challenge:0.1.0 exit 0
"""

import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse

SOCKET = "/var/run/docker.sock"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("localhost", timeout=120)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(SOCKET)


def call(conn, method, path, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
    return json.loads(data) if data else None


def run_job(i, image, command, results):
    conn = UnixConnection()
    started = time.monotonic()
    spec = {
        "Name": f"direct-job-{i}-{int(started * 1000) % 100000}",
        "Labels": {"base.component": "bench-direct"},
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": image,
                "Args": command,
                "ReadOnly": True,
                "Init": True,
                "CapabilityDrop": ["ALL"],
            },
            "Resources": {"Limits": {"NanoCPUs": 100_000_000, "MemoryBytes": 32 * 1024 * 1024, "Pids": 512}},
            "RestartPolicy": {"Condition": "none"},
            "Placement": {"Constraints": ["node.labels.base.workload==cpu"]},
        },
        "Mode": {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}},
    }
    try:
        created = call(conn, "POST", "/services/create", spec)
        service = created["ID"]
        filters = urllib.parse.quote(json.dumps({"service": [service]}))
        state = None
        while True:
            tasks = call(conn, "GET", f"/tasks?filters={filters}")
            states = [t.get("Status", {}).get("State") for t in tasks]
            if any(s in ("complete", "failed", "rejected", "shutdown") for s in states):
                state = next(s for s in states if s in ("complete", "failed", "rejected", "shutdown"))
                break
            time.sleep(0.1)
        call(conn, "DELETE", f"/services/{service}")
        results[i] = (time.monotonic() - started, state)
    except Exception as e:  # noqa: BLE001 - a benchmark reports, it does not recover
        results[i] = (time.monotonic() - started, f"error: {e}")
    finally:
        conn.close()


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    image = sys.argv[2] if len(sys.argv) > 2 else "base.local/quiz-challenge:0.1.0"
    command = sys.argv[3:] or ["exit", "0"]
    results = [None] * count
    threads = [threading.Thread(target=run_job, args=(i, image, command, results)) for i in range(count)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    ok = [r[0] * 1000 for r in results if r and r[1] == "complete"]
    failed = [r for r in results if not r or r[1] != "complete"]
    for r in failed[:5]:
        print(f"job did not complete: {r}", file=sys.stderr)
    print(json.dumps({
        "path": "direct",
        "jobs": count,
        "succeeded": len(ok),
        "failed": len(failed),
        "wall_s": wall,
        "jobs_per_s": count / wall,
        "latency_ms_p50": percentile(ok, 50),
        "latency_ms_p99": percentile(ok, 99),
    }))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
