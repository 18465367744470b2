#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `base master worker …` against the real local Docker engine, as an
//! operator runs it on a manager: the swarm tests are `#[ignore]`d because
//! they need an engine that is (or may be made) a single-node swarm
//! manager; run them with `cargo test -p base-cli --test workers -- --ignored`.
//!
//! Each swarm test makes the engine a manager if it is not one
//! (`docker swarm init --advertise-addr 127.0.0.1`) and leaves the swarm
//! again at the end only in that case, so a machine is left as it was
//! found. Whatever a test changes on the node (its workload label, its
//! availability) is restored by a guard, even when an assertion fails. The
//! tests hold one lock because they change the same node.

use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

/// Serializes the tests of this file: they all change the one local node.
static NODE_LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    NODE_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

/// Trimmed stdout of a docker command that must succeed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `(LocalNodeState, ControlAvailable)` of the local engine.
fn swarm_state() -> (String, bool) {
    let s = docker_ok(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    let (state, control) = s.split_once(' ').unwrap_or((s.as_str(), "false"));
    (state.to_string(), control == "true")
}

/// The local engine as a swarm manager for the length of a test; leaves
/// the swarm on drop only if this test created it.
struct Swarm {
    /// This engine's swarm node id.
    node_id: String,
    /// Whether this test ran `docker swarm init` (and so must leave).
    initialised: bool,
}

impl Swarm {
    fn ensure() -> Self {
        let mut initialised = false;
        // Another test suite may init or leave the swarm on this machine at
        // the same time: re-check after every step instead of assuming.
        for _ in 0..5 {
            match swarm_state() {
                (state, true) if state == "active" => {
                    let node_id = docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"]);
                    return Self {
                        node_id,
                        initialised,
                    };
                }
                (state, false) if state == "inactive" => {
                    let out = docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
                    initialised = out.status.success();
                }
                (state, control) if state == "active" && !control => {
                    panic!("this engine is a swarm worker; the tests need a manager")
                }
                _ => std::thread::sleep(std::time::Duration::from_secs(1)),
            }
        }
        panic!("could not make the local engine a swarm manager");
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if self.initialised {
            let _ = docker(&["swarm", "leave", "--force"]);
        }
    }
}

/// What one run of `base` did.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

fn base(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_base"))
        .args(args)
        .output()
        .expect("run base");
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn base_ok(args: &[&str]) -> String {
    let run = base(args);
    assert!(
        run.success,
        "base {args:?} failed:\n{}{}",
        run.stdout, run.stderr
    );
    run.stdout
}

fn base_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = base_ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

/// The node's labels as `docker node inspect` reports them.
fn labels(node: &str) -> serde_json::Map<String, Value> {
    let raw = docker_ok(&["node", "inspect", "--format", "{{json .Spec.Labels}}", node]);
    match serde_json::from_str(&raw).unwrap() {
        Value::Object(m) => m,
        _ => serde_json::Map::new(), // `null`: no labels at all
    }
}

fn availability(node: &str) -> String {
    docker_ok(&[
        "node",
        "inspect",
        "--format",
        "{{.Spec.Availability}}",
        node,
    ])
}

/// Puts the node's `base.workload` label back as it was.
struct RestoreLabel {
    node: String,
    previous: Option<String>,
}

impl Drop for RestoreLabel {
    fn drop(&mut self) {
        let _ = match &self.previous {
            Some(v) => docker(&[
                "node",
                "update",
                "--label-add",
                &format!("base.workload={v}"),
                &self.node,
            ]),
            None => docker(&["node", "update", "--label-rm", "base.workload", &self.node]),
        };
    }
}

/// Puts the node's availability back as it was.
struct RestoreAvailability {
    node: String,
    previous: String,
}

impl Drop for RestoreAvailability {
    fn drop(&mut self) {
        let _ = docker(&[
            "node",
            "update",
            "--availability",
            &self.previous,
            &self.node,
        ]);
    }
}

#[test]
#[ignore = "needs docker swarm"]
fn list_shows_this_node() {
    let _lock = lock();
    let swarm = Swarm::ensure();
    let v = base_json(&["master", "worker", "list"]);
    let nodes = v["nodes"].as_array().expect("a nodes array");
    let me = nodes
        .iter()
        .find(|n| n["id"] == swarm.node_id.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {v:#}", swarm.node_id));
    assert_eq!(me["role"], "manager");
    assert_eq!(me["state"], "ready");
    assert!(me["gpus"].is_u64(), "{me}");
    let table = base_ok(&["master", "worker", "list"]);
    for column in ["hostname", "availability", "workload", "GPUs"] {
        assert!(table.contains(column), "{column} missing:\n{table}");
    }
    assert!(table.contains(&swarm.node_id), "{table}");
}

#[test]
#[ignore = "needs docker swarm"]
fn label_sets_the_workload_and_keeps_other_labels() {
    let _lock = lock();
    let swarm = Swarm::ensure();
    let node = swarm.node_id.clone();
    let before = labels(&node);
    let _restore = RestoreLabel {
        node: node.clone(),
        previous: before
            .get("base.workload")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    docker_ok(&["node", "update", "--label-add", "base.test-keep=1", &node]);

    let v = base_json(&["master", "worker", "label", &node, "--workload", "cpu"]);
    assert_eq!(v["workload"], "cpu", "{v:#}");
    let after = labels(&node);
    assert_eq!(after["base.workload"], "cpu");
    assert_eq!(after["base.test-keep"], "1", "other labels are kept");

    let out = base_ok(&["master", "worker", "label", &node, "--workload", "gpu"]);
    assert!(out.contains("now takes gpu jobs"), "{out}");
    assert_eq!(labels(&node)["base.workload"], "gpu");
    let shown = base_json(&["master", "worker", "inspect", &node]);
    assert_eq!(shown["workload"], "gpu");

    docker_ok(&["node", "update", "--label-rm", "base.test-keep", &node]);
}

#[test]
#[ignore = "needs docker swarm"]
fn token_prints_the_join_and_label_commands() {
    let _lock = lock();
    let swarm = Swarm::ensure();
    let out = base_ok(&["master", "worker", "token", "--gpu"]);
    assert!(out.contains("docker swarm join --token SWMTKN-"), "{out}");
    assert!(out.contains(":2377"), "{out}");
    assert!(
        out.contains("base master worker label <NODE> --workload gpu"),
        "{out}"
    );

    let v = base_json(&["master", "worker", "token"]);
    let join = v["join_command"].as_str().unwrap();
    assert!(join.starts_with("docker swarm join --token SWMTKN-"), "{v}");
    assert!(join.ends_with(":2377"), "{v}");
    assert_eq!(
        v["label_command"],
        "base master worker label <NODE> --workload cpu"
    );
    let expected = docker_ok(&["swarm", "join-token", "-q", "worker"]);
    assert!(
        join.contains(&expected),
        "the worker token, not another one"
    );

    // Rotating changes the token; only on a swarm this test created, so a
    // swarm someone else uses keeps its token.
    if swarm.initialised {
        let rotated = base_json(&["master", "worker", "token", "--rotate"]);
        let new = rotated["join_command"].as_str().unwrap();
        assert_ne!(new, join, "--rotate issues a new token");
        assert!(new.contains(&docker_ok(&["swarm", "join-token", "-q", "worker"])));
    }
}

#[test]
#[ignore = "needs docker swarm"]
fn drain_and_back_to_active() {
    let _lock = lock();
    let swarm = Swarm::ensure();
    let node = swarm.node_id.clone();
    let _restore = RestoreAvailability {
        node: node.clone(),
        previous: availability(&node),
    };
    let v = base_json(&["master", "worker", "drain", &node]);
    assert_eq!(v["availability"], "drain", "{v:#}");
    assert_eq!(availability(&node), "drain");
    let out = base_ok(&["master", "worker", "drain", &node, "--active"]);
    assert!(out.contains("is active"), "{out}");
    assert_eq!(availability(&node), "active");
}

#[test]
#[ignore = "needs docker swarm"]
fn unknown_nodes_are_named_in_the_error() {
    let _lock = lock();
    let _swarm = Swarm::ensure();
    let run = base(&["master", "worker", "inspect", "no-such-node-base-test"]);
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("no swarm node 'no-such-node-base-test'"),
        "{}",
        run.stderr
    );
}

#[test]
#[ignore = "needs docker swarm"]
fn an_engine_outside_a_swarm_is_not_a_manager() {
    let _lock = lock();
    if swarm_state().0 != "inactive" {
        eprintln!(
            "skipped: the engine is in a swarm, and these tests never leave one they did not create"
        );
        return;
    }
    for args in [
        &["master", "worker", "list"][..],
        &["master", "worker", "token"],
    ] {
        let run = base(args);
        if swarm_state().0 != "inactive" {
            return; // someone created a swarm meanwhile: nothing to conclude
        }
        assert!(!run.success, "{args:?}");
        assert!(
            run.stderr.contains("this engine is not a swarm manager"),
            "{args:?}: {}",
            run.stderr
        );
    }
}

/// Needs no engine at all: a Docker that cannot be reached is reported as
/// such, not as a swarm or node problem.
#[test]
fn an_unreachable_engine_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_base"))
        .args(["master", "worker", "list"])
        .env("DOCKER_HOST", "unix:///nonexistent/base-test/docker.sock")
        .output()
        .expect("run base");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot reach the Docker engine"),
        "{stderr}"
    );
}
