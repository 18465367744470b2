//! deploy/swarm/join-worker.sh renders a worker's daemon.json without a GPU
//! or Docker: a fake `nvidia-smi` on PATH and a temp dir for /etc/docker.
//! Checks the merge (BASE's keys win, the rest is kept), the backup, the dry
//! run writing nothing, and malformed `nvidia-smi` output being refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const UUID_A: &str = "GPU-5b2c1a3e-1f0e-4d8a-9c77-0a1b2c3d4e5f";
const UUID_B: &str = "GPU-8d1f0b72-3a4c-4e2b-8f91-6e5d4c3b2a10";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/swarm/join-worker.sh")
}

/// A temp dir with `bin/nvidia-smi` printing `gpus` and `etc/daemon.json`
/// holding `existing`.
fn setup(gpus: &str, existing: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    let fake = dir.path().join("bin/nvidia-smi");
    std::fs::write(&fake, format!("#!/bin/sh\nprintf '{gpus}'\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("etc/daemon.json"),
        serde_json::to_string(existing).unwrap(),
    )
    .unwrap();
    dir
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap()
    );
    Command::new(script())
        .args(args)
        .arg("--docker-dir")
        .arg(dir.join("etc"))
        .env("PATH", path)
        .output()
        .unwrap()
}

fn existing() -> Value {
    json!({
        "live-restore": true,
        "dns": ["10.0.0.53"],
        "log-opts": {"labels": "team", "max-size": "1g"},
        "runtimes": {"crun": {"path": "/usr/bin/crun"}},
        "node-generic-resources": ["NVIDIA-GPU=GPU-stale", "FPGA=fpga-0"]
    })
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn gpu_worker_daemon_json_lists_every_gpu_and_keeps_the_operators_keys() {
    let dir = setup(&format!("{UUID_A}\\n{UUID_B}\\n"), &existing());
    let out = run(dir.path(), &["--gpu", "--apply", "--skip-join"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("etc/daemon.json")).unwrap())
            .unwrap();
    assert_eq!(
        written,
        json!({
            "default-runtime": "nvidia",
            "dns": ["10.0.0.53"],
            "live-restore": false,
            "log-driver": "json-file",
            "log-opts": {"labels": "team", "max-size": "50m", "max-file": "3"},
            "no-new-privileges": true,
            "node-generic-resources": [
                "FPGA=fpga-0",
                format!("NVIDIA-GPU={UUID_A}"),
                format!("NVIDIA-GPU={UUID_B}")
            ],
            "runtimes": {
                "crun": {"path": "/usr/bin/crun"},
                "nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}
            }
        })
    );
    // The original is kept byte for byte beside it.
    let names = files(dir.path());
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[1].starts_with("daemon.json.bak-"), "{names:?}");
    let backup: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("etc").join(&names[1])).unwrap())
            .unwrap();
    assert_eq!(backup, existing());

    // A second run has nothing to change and makes no second backup.
    let again = run(dir.path(), &["--gpu", "--apply", "--skip-join"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already has what a gpu worker needs"));
    assert_eq!(files(dir.path()).len(), 2);
}

#[test]
fn cpu_worker_needs_no_gpu_and_dry_run_writes_nothing() {
    let dir = setup("", &existing());
    let out = run(dir.path(), &["--cpu", "--skip-join"]);
    assert!(out.status.success());
    // The plan shows the rendered file; nothing on disk changed.
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["no-new-privileges"], json!(true));
    assert_eq!(shown["live-restore"], json!(false));
    // A CPU worker leaves GPU keys it finds alone (it does not own them).
    assert_eq!(
        shown["node-generic-resources"],
        existing()["node-generic-resources"]
    );
    assert!(shown.get("default-runtime").is_none());
    assert_eq!(files(dir.path()), vec!["daemon.json".to_string()]);
    let on_disk: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("etc/daemon.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk, existing());
}

#[test]
fn malformed_nvidia_smi_output_is_refused_and_nothing_written() {
    let dir = setup("No devices were found\\n", &existing());
    let out = run(dir.path(), &["--gpu", "--apply", "--skip-join"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GPU UUID"), "{err}");
    assert_eq!(files(dir.path()), vec!["daemon.json".to_string()]);

    let none = setup("", &existing());
    let out = run(none.path(), &["--gpu", "--apply", "--skip-join"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lists no GPU"));
}

#[test]
fn join_needs_a_swarm_token_and_a_manager_address() {
    let dir = setup("", &existing());
    let out = run(
        dir.path(),
        &[
            "--cpu",
            "--manager",
            "10.0.0.1:2377",
            "--token",
            "not-a-token",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not look like a swarm token"));
    let out = run(dir.path(), &["--cpu", "--token", "SWMTKN-1-abc123-def456"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("manager address is missing"));
}
