//! Job network isolation on the real engine: a job cannot reach another
//! job — not even one of the same challenge on `network: none` — and a job
//! on `network: default` cannot reach the node's control-plane ports, while
//! it still reaches a port that is not one (so the block is specific, not a
//! job without any network).
//!
//! Needs a single-node Swarm labelled `base.workload=cpu` (scripts/test.sh
//! sets one up), `rustc` (the probe is compiled by the test) and root (the
//! test applies `deploy/swarm/base-job-firewall.sh` with a chain of its own
//! and the one port it treats as control plane, and removes it after).
//! The probe image `base.local/base-netprobe:test` is built from scratch
//! here: `tests/fixtures/netprobe.rs` as one static binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base_sdk::model::{ImageRef, Slug};
use base_sdk::orchestrator::swarm::SwarmOrchestrator;
use base_sdk::orchestrator::{JobLimits, JobNetwork, JobSpec, Orchestrator};
use tokio::io::AsyncWriteExt;

const PROBE_IMAGE: &str = "base.local/base-netprobe:test";
const PROBE_PORT: u16 = 7000;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Compiles the probe into a static binary and builds the image from
/// scratch around it.
fn build_probe_image() {
    let dir = tempfile::tempdir().unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    run(Command::new(rustc)
        .args(["--edition", "2021", "-O"])
        .args(["-C", "target-feature=+crt-static"])
        .args(["-C", "relocation-model=static"])
        .arg(repo_root().join("base-sdk/tests/fixtures/netprobe.rs"))
        .arg("-o")
        .arg(dir.path().join("netprobe")));
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY netprobe /netprobe\n",
    )
    .unwrap();
    run(Command::new("docker")
        .args(["build", "-q", "-t", PROBE_IMAGE])
        .arg(dir.path()));
}

/// The node firewall for jobs, applied with a chain of the test's own and
/// one control-plane port; removed on drop, also when the test fails.
struct Firewall {
    chain: String,
}

impl Firewall {
    fn script(&self, action: &str, ports: &str) -> Command {
        let mut c = Command::new(repo_root().join("deploy/swarm/base-job-firewall.sh"));
        c.env("BASE_JOB_FIREWALL_CHAIN", &self.chain)
            .env("BASE_CONTROL_PLANE_PORTS", ports)
            .arg(action);
        c
    }

    fn apply(control_plane_port: u16) -> Self {
        let fw = Self {
            chain: format!("BTEST{}", std::process::id() % 100_000),
        };
        run(&mut fw.script("apply", &control_plane_port.to_string()));
        fw
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        let _ = self.script("remove", "1").output();
    }
}

/// Removes the test's job services and their networks, also on failure.
#[derive(Default)]
struct Cleanup {
    jobs: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.jobs {
            let _ = Command::new("docker")
                .args(["service", "rm", &format!("base-job-{id}")])
                .output();
            // Docker 20.10 leaves a deleted job service's task running (and
            // a finished one's container on the node): remove the test's
            // containers, so none keeps a network in use.
            let ids = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label=base.job.id={id}")])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for container in ids.split_whitespace() {
                let _ = Command::new("docker")
                    .args(["rm", "-f", container])
                    .output();
            }
        }
        // A network is refused while its task's container detaches.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut left: Vec<&String> = self.jobs.iter().collect();
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|id| {
                let name = format!("base-job-{id}");
                let exists = Command::new("docker")
                    .args(["network", "inspect", &name])
                    .output()
                    .is_ok_and(|o| o.status.success());
                exists
                    && !Command::new("docker")
                        .args(["network", "rm", &name])
                        .output()
                        .is_ok_and(|o| o.status.success())
            });
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn job(id: &str, network: JobNetwork, command: &[&str]) -> JobSpec {
    JobSpec {
        id: id.into(),
        slug: Slug::parse("swt-net").unwrap(),
        job_id: format!("caller-{id}"),
        task_id: None,
        image: ImageRef::parse(PROBE_IMAGE).unwrap(),
        command: command.iter().map(|c| c.to_string()).collect(),
        workdir: None,
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
        limits: JobLimits {
            cpus: 0.5,
            memory_bytes: 64 << 20,
            pids: 64,
            gpus: None,
            network,
            read_only: true,
            user: Some("65534:65534".into()),
            tmpfs: vec![],
            ulimits: vec![],
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["no-new-privileges".into()],
            init: true,
        },
        mounts: vec![],
        timeout_seconds: 300,
        deadline_at: chrono::Utc::now() + chrono::Duration::minutes(10),
    }
}

/// A TCP listener on every address of the node that answers `token`.
async fn host_listener(token: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.write_all(token.as_bytes()).await;
        }
    });
    port
}

/// Starts a listening probe job and returns the addresses it answers on
/// (each checked from inside the job).
async fn start_listener(
    o: &SwarmOrchestrator,
    id: &str,
    network: JobNetwork,
    token: &str,
) -> Vec<String> {
    let port = PROBE_PORT.to_string();
    o.run_job(&job(id, network, &["/netprobe", "listen", &port, token]))
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let logs = o.job_logs(id, 64_000).await.unwrap();
        if logs.stdout.contains("LISTENING") {
            let addrs: Vec<String> = logs
                .stdout
                .lines()
                .filter_map(|l| l.strip_prefix("ADDR "))
                .map(str::to_string)
                .collect();
            assert!(
                !addrs.is_empty(),
                "listener {id} has no address: {}",
                logs.stdout
            );
            return addrs;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "listener {id} did not start: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs a checking probe job to its end and returns its verdict per
/// target (`true`: reached).
async fn check(
    o: &SwarmOrchestrator,
    id: &str,
    network: JobNetwork,
    targets: &[String],
) -> BTreeMap<String, bool> {
    let mut command = vec!["/netprobe", "check"];
    command.extend(targets.iter().map(String::as_str));
    o.run_job(&job(id, network, &command)).await.unwrap();
    let start = Instant::now();
    loop {
        let status = o.wait_job(id, Duration::from_secs(5)).await.unwrap();
        if status.state.is_terminal() {
            assert_eq!(status.exit_code, Some(0), "{status:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "checker {id} did not finish: {status:?}"
        );
    }
    let logs = o.job_logs(id, 64_000).await.unwrap();
    assert!(logs.stdout.contains("DONE"), "{logs:?}");
    targets
        .iter()
        .map(|t| {
            let reached = logs.stdout.lines().any(|l| l == format!("REACHED {t}"));
            let blocked = logs
                .stdout
                .lines()
                .any(|l| l.starts_with(&format!("BLOCKED {t}:")));
            assert!(reached != blocked, "no verdict for {t}: {}", logs.stdout);
            (t.clone(), reached)
        })
        .collect()
}

fn targets(addrs: &[String], token: &str) -> Vec<String> {
    addrs
        .iter()
        .map(|a| format!("{a}:{PROBE_PORT}:{token}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs docker swarm, rustc and root (iptables)"]
async fn jobs_cannot_reach_each_other_nor_the_control_plane() {
    build_probe_image();
    let o = SwarmOrchestrator::connect().await.unwrap();
    let tag = format!("{:08x}", rand::random::<u32>());
    let id = |name: &str| format!("bnet{tag}{name}");
    let mut cleanup = Cleanup::default();
    cleanup.jobs.extend(["a", "b", "c", "d"].map(&id));

    let control_plane = host_listener("control-plane").await;
    let open = host_listener("open-port").await;
    let _firewall = Firewall::apply(control_plane);

    // Two jobs of the same challenge listening: one on `none`, one on
    // `default`.
    let none_addrs = start_listener(&o, &id("a"), JobNetwork::None, "job-a").await;
    let default_addrs = start_listener(&o, &id("b"), JobNetwork::Default, "job-b").await;

    // Another `none` job of the same challenge reaches neither job, nor
    // anything on the node.
    let mut from_none = targets(&none_addrs, "job-a");
    from_none.extend(targets(&default_addrs, "job-b"));
    from_none.push(format!("gateway:{open}:open-port"));
    let verdict = check(&o, &id("c"), JobNetwork::None, &from_none).await;
    eprintln!("from a job on none (true: reached): {verdict:?}");
    for (target, reached) in &verdict {
        assert!(!reached, "a job on none reached {target}: {verdict:?}");
    }

    // A `default` job reaches neither job nor the control-plane port, but
    // does reach a port of the node that is not the control plane.
    let mut from_default = targets(&none_addrs, "job-a");
    from_default.extend(targets(&default_addrs, "job-b"));
    let cp = format!("gateway:{control_plane}:control-plane");
    let allowed = format!("gateway:{open}:open-port");
    from_default.push(cp.clone());
    from_default.push(allowed.clone());
    let verdict = check(&o, &id("d"), JobNetwork::Default, &from_default).await;
    eprintln!("from a job on default (true: reached): {verdict:?}");
    assert!(
        verdict[&allowed],
        "the allowed port must be reachable: {verdict:?}"
    );
    for (target, reached) in &verdict {
        if *target != allowed {
            assert!(!reached, "a job on default reached {target}: {verdict:?}");
        }
    }

    // Removing the jobs leaves no network behind (the engine may refuse a
    // network until its container has detached: the prune takes it then).
    for n in ["a", "b", "c", "d"] {
        o.remove_job(&id(n)).await.unwrap();
    }
    let start = Instant::now();
    loop {
        o.prune_job_networks(Duration::ZERO).await.unwrap();
        let left = run_docker_networks(&tag);
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job networks left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The job networks of this run still present.
fn run_docker_networks(tag: &str) -> Vec<String> {
    run(Command::new("docker").args([
        "network",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        "label=base.component=job-network",
    ]))
    .lines()
    .filter(|n| n.contains(tag))
    .map(str::to_string)
    .collect()
}
