//! The broker on a real single-node Swarm, as a separate process: jobs run
//! as replicated-job services, and a `kill -9` of the broker in the middle
//! of them leaks nothing — after a restart every job ends (finished, timed
//! out from its labels, or failed when no node took it), no job service, job
//! container or job-mount config is left and no GPU stays leased.
//!
//! Needs what `scripts/test.sh` sets up (an active swarm, the node labelled
//! `base.workload=cpu`, the image `base.local/quiz-challenge:0.1.0`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base_sdk::broker::client::{BrokerClient, JobView};
use base_sdk::broker::request::BrokerRunRequest;
use base_sdk::config::Environment;
use base_sdk::orchestrator::JobState;
use base_sdk::registry::{NewChallenge, Registry};
use base_sdk::store::{SqliteStore, Store};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio::process::{Child, Command};

const IMAGE: &str = "base.local/quiz-challenge:0.1.0";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn job_services() -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "service",
            "ls",
            "-q",
            "--filter",
            "label=base.component=job",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Running containers of this test's jobs (on this single node).
fn running_job_containers() -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            "label=base.component=job",
            "--filter",
            "label=base.challenge=crashy",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn start_broker(dir: &Path, db: &str, port: u16, run: u32) -> Child {
    let log = std::fs::File::create(dir.join(format!("broker-{run}.log"))).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_base-server"));
    cmd.arg("broker");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("BASE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("BASE_DATA_DIR", dir)
        .env("BASE_DATABASE_URL", db)
        .env("BASE_ORCHESTRATOR", "swarm")
        .env("BASE_BROKER_LISTEN", format!("127.0.0.1:{port}"))
        .env("BASE_BROKER_ALLOWED_IMAGES", "base.local/")
        // No node advertises GPUs here: one GPU of capacity lets a GPU job
        // take a lease and then wait forever for a node, as on a cluster
        // whose GPU worker is gone.
        .env("BASE_BROKER_GPU_CAPACITY", "1")
        .env("BASE_BROKER_START_GRACE_SECONDS", "3")
        // A job no node takes fails after this: long enough for the GPU
        // job below to outlive the first broker, short enough for the test.
        .env("BASE_BROKER_SCHEDULE_TIMEOUT_SECONDS", "15")
        // The static shim scripts/test.sh builds, standing in for a
        // worker's installed copy.
        .env(
            "BASE_SWARM_JOB_SHIM",
            std::env::var("BASE_TEST_JOB_SHIM").expect(
                "BASE_TEST_JOB_SHIM must name the static job shim (scripts/test.sh sets it)",
            ),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn().expect("spawning base-server broker")
}

async fn wait_healthy(port: u16) {
    let url = format!("http://127.0.0.1:{port}/health");
    for _ in 0..150 {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the broker did not come up on {port}");
}

/// `files` as the base64 gzip tar a mount carries.
fn archive(files: &[(&str, &[u8])]) -> String {
    use base64::Engine;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, name, *data).unwrap();
    }
    let gz = tar.into_inner().unwrap().finish().unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz)
}

/// This test's job-mount configs.
fn mount_configs() -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args([
            "config",
            "ls",
            "-q",
            "--filter",
            "label=base.component=job-mount",
            "--filter",
            "label=base.challenge=crashy",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn request(job_id: &str, command: &[&str], timeout: i64, gpus: Option<u32>) -> BrokerRunRequest {
    let mut req = json!({
        "job_id": job_id,
        "image": IMAGE,
        "image_pull_policy": "Never",
        "command": command,
        "timeout_seconds": timeout,
        "limits": {"cpus": 0.2, "memory": "64m"},
    });
    if let Some(g) = gpus {
        req["limits"]["gpu_count"] = json!(g);
    }
    serde_json::from_value(req).unwrap()
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn kill_9_mid_job_leaks_nothing_after_restart() {
    assert!(
        job_services().is_empty(),
        "job services left by an earlier test"
    );
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("base.sqlite3").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&db).await.unwrap());
    store.migrate().await.unwrap();
    let (_, tokens) = Registry::new(store.clone(), Environment::Development)
        .create(
            NewChallenge {
                slug: "crashy".into(),
                name: "Crashy".into(),
                image: IMAGE.into(),
                version: "0.1.0".into(),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    let token = tokens
        .docker_broker_token
        .unwrap()
        .expose_secret()
        .to_string();
    let port = free_port();
    let client = BrokerClient::new(
        format!("http://127.0.0.1:{port}"),
        "crashy",
        SecretString::from(token),
    )
    .unwrap();

    let mut broker = start_broker(dir.path(), &db, port, 1);
    wait_healthy(port).await;
    // The synchronous route on the real engine first: output and exit code.
    let sync = client
        .run(&request("sync", &["exit", "5"], 60, None))
        .await
        .unwrap();
    assert_eq!(sync.returncode, 5, "{sync:?}");
    assert!(
        sync.stdout.contains("exit mode: stdout, code 5"),
        "{sync:?}"
    );

    // Mounted files reach the job on the real engine (as Swarm configs),
    // a directory mount and a single-file mount, and go with the job.
    let mut mounted = request(
        "mounted",
        &["cat", "/work/in/input.txt", "/etc/task.txt"],
        60,
        None,
    );
    mounted.mounts = serde_json::from_value(json!([
        {"target": "/work/in", "archive_b64": archive(&[("input.txt", b"payload\n")])},
        {"target": "/etc/task.txt", "source_type": "file", "source_name": "t.txt",
         "archive_b64": archive(&[("t.txt", b"task\n")])},
    ]))
    .unwrap();
    let run = client.run(&mounted).await.unwrap();
    assert_eq!(
        (run.returncode, run.stdout.as_str()),
        (0, "payload\ntask\n"),
        "{run:?}"
    );

    // A writable mount is seeded, changed by the job and comes back in the
    // synchronous answer, through the real base-server and the shim.
    let mut writable = request(
        "writable",
        &["append", "/work/out/log.txt", "second"],
        60,
        None,
    );
    writable.mounts = serde_json::from_value(json!([
        {"target": "/work/out", "read_only": false,
         "archive_b64": archive(&[("log.txt", b"first\n")])},
    ]))
    .unwrap();
    let run = client.run(&writable).await.unwrap();
    assert_eq!(run.returncode, 0, "{run:?}");
    assert!(!run.stdout.contains("BASE-OUT1"), "{run:?}");
    assert_eq!(run.outputs.len(), 1, "{run:?}");
    let files = base_sdk::broker::client::output_files(&run.outputs[0]).unwrap();
    assert_eq!(
        files.get("log.txt").map(Vec::as_slice),
        Some(&b"first\nsecond\n"[..])
    );

    let finishing = [
        client
            .submit(&request("fin-1", &["sleep", "6"], 120, None))
            .await
            .unwrap(),
        client
            .submit(&request("fin-2", &["sleep", "6"], 120, None))
            .await
            .unwrap(),
    ];
    // The overdue job carries a mount: its config must go when the
    // restarted broker's reaper removes it.
    let mut overdue = request("overdue", &["sleep", "300"], 4, None);
    overdue.mounts = serde_json::from_value(json!([
        {"target": "/work/in", "archive_b64": archive(&[("input.txt", b"x")])},
    ]))
    .unwrap();
    let overdue = client.submit(&overdue).await.unwrap();
    let gpu = client
        .submit(&request("gpu", &["exit", "0"], 60, Some(1)))
        .await
        .unwrap();
    assert_eq!(store.gpu_leases().await.unwrap().len(), 1);

    // Wait until the CPU jobs run, then kill the broker without warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut running = 0;
        for j in finishing.iter().chain([&overdue]) {
            if client.status(&j.id).await.unwrap().state == JobState::Running {
                running += 1;
            }
        }
        if running == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "jobs did not start");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
    assert_eq!(job_services().len(), 4, "the jobs outlive the broker");

    // Restart: recovery and the reaper must finish everything.
    let mut broker = start_broker(dir.path(), &db, port, 2);
    wait_healthy(port).await;
    let ids: Vec<&str> = finishing
        .iter()
        .chain([&overdue, &gpu])
        .map(|j| j.id.as_str())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let ended: Vec<JobView> = loop {
        let mut views = Vec::new();
        for id in &ids {
            views.push(client.status(id).await.unwrap());
        }
        if views.iter().all(|v| v.state.is_terminal()) {
            break views;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not end after the restart: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(ended[0].state, JobState::Succeeded, "{:?}", ended[0]);
    assert_eq!(ended[1].state, JobState::Succeeded, "{:?}", ended[1]);
    assert_eq!(
        (ended[2].state, ended[2].exit_code),
        (JobState::TimedOut, Some(124)),
        "{:?}",
        ended[2]
    );
    // The GPU job no node can take never ran: the restarted broker ends it
    // failed, not timed out, after the schedule wait (15 s here).
    assert_eq!(
        (ended[3].state, ended[3].exit_code),
        (JobState::Failed, None),
        "{:?}",
        ended[3]
    );
    assert!(
        ended[3]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no node took it")),
        "{:?}",
        ended[3]
    );
    // The output of a job that ended while no broker ran is still kept.
    let logs = client.logs(&finishing[0].id).await.unwrap();
    assert!(logs.stdout.contains("sleep mode: done"), "{logs:?}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while !job_services().is_empty() {
        assert!(
            Instant::now() < deadline,
            "job services leaked: {:?}",
            job_services()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        store.gpu_leases().await.unwrap().is_empty(),
        "GPU lease leaked"
    );
    assert!(
        mount_configs().is_empty(),
        "job-mount configs leaked: {:?}",
        mount_configs()
    );
    // No job's container still runs either: Docker 20.10 deletes a
    // replicated-job service without stopping its task (moby/moby#44312),
    // so a removal that only deleted the service would leave the overdue
    // job's `sleep 300` running here, invisible to `docker service ls`.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running_job_containers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "job containers still run after their services were removed: {:?}",
            running_job_containers()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    broker.start_kill().unwrap();
    let _ = broker.wait().await;
}
