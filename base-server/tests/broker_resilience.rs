//! The broker keeps its books straight when the database goes away at the
//! worst moment: a job that ends while PostgreSQL is down is recorded once
//! it is back, and its GPU lease and its challenge's concurrency slot come
//! back — without restarting the broker. And the reaper repairs a record
//! whose job has no service any more and that nobody is finishing (the
//! master died between removing the service and writing the end).
//!
//! The PostgreSQL test runs its own throw-away cluster (it stops and starts
//! it), so it needs PostgreSQL's server binaries (`initdb`, `pg_ctl`: found
//! under `/usr/lib/postgresql/*/bin`, or `BASE_TEST_PG_BIN`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base_sdk::broker::{Broker, BrokerConfig};
use base_sdk::config::Environment;
use base_sdk::model::{Admission, BrokerPolicy, JobFilter, JobRecord, Slug};
use base_sdk::orchestrator::{JobState, Orchestrator};
use base_sdk::registry::{NewChallenge, Registry};
use base_sdk::store::{PgStore, Store};
use base_sdk::testing::FakeOrchestrator;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tower::ServiceExt;

const IMAGE: &str = "ghcr.io/platformnetwork/eval:1.0.0";

/// A PostgreSQL cluster of the test's own, in a temporary directory, that
/// the test may stop and start. Stopped (immediately) and deleted on drop.
struct OwnPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    /// `initdb` and start a fresh cluster on a free loopback port.
    fn start_new() -> Self {
        let bin = std::env::var_os("BASE_TEST_PG_BIN")
            .map(PathBuf::from)
            .or_else(newest_pg_bin)
            .expect("PostgreSQL server binaries: install postgresql or set BASE_TEST_PG_BIN");
        let dir = tempfile::Builder::new()
            .prefix("base-broker-resilience-pg.")
            .tempdir_in("/tmp")
            .unwrap();
        if is_root() {
            // PostgreSQL refuses to run as root.
            run(Command::new("chown").arg("postgres").arg(dir.path()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { bin, dir, port };
        run(pg.as_owner("initdb").arg("-D").arg(pg.data()).args([
            "-A",
            "trust",
            "-U",
            "base",
            "--no-sync",
        ]));
        pg.start();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command running one of the server binaries as the cluster's owner.
    fn as_owner(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-o", &options, "start"]));
    }

    /// Stops the server the way an operator's restart does: connections
    /// are cut, new ones refused until it is started again.
    fn stop(&self) {
        run(self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "fast", "stop"]));
    }

    fn url(&self) -> String {
        format!("postgres://base@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn newest_pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running a PostgreSQL binary");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A challenge allowed one job at a time, and a broker with a fast reaper.
async fn broker(store: Arc<dyn Store>, fake: &FakeOrchestrator) -> (Broker, String) {
    let registry = Registry::new(store.clone(), Environment::Development);
    let (_, tokens) = registry
        .create(
            NewChallenge {
                slug: "agent".into(),
                name: "Agent".into(),
                image: "ghcr.io/platformnetwork/agent:1.0.0".into(),
                version: "1.0.0".into(),
                broker: Some(BrokerPolicy {
                    max_concurrent_jobs: Some(1),
                    ..BrokerPolicy::default()
                }),
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
    let broker = Broker::new(
        store,
        Arc::new(fake.clone()) as Arc<dyn Orchestrator>,
        BrokerConfig {
            reap_interval: Duration::from_millis(200),
            ..BrokerConfig::default()
        },
    );
    (broker, token)
}

/// `POST /v1/jobs` through the broker's HTTP surface.
async fn submit(broker: &Broker, token: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/jobs")
        .header("X-Base-Challenge-Slug", "agent")
        .header("Authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = base_server::broker::app(broker.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn gpu_job(job_id: &str, command: &[&str]) -> Value {
    json!({"job_id": job_id, "image": IMAGE, "command": command,
           "limits": {"gpu_count": 1}, "timeout_seconds": 600})
}

/// Waits (bounded by `limit`, generous: a liveness bound, not a speed
/// check) until `check` answers `Some`.
async fn within<T>(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres binaries (initdb, pg_ctl): starts and stops its own cluster"]
async fn a_job_ending_while_postgres_is_down_gives_back_its_lease_and_slot() {
    let pg = OwnPostgres::start_new();
    let store: Arc<dyn Store> = {
        let s = PgStore::connect(&pg.url()).await.unwrap();
        s.migrate().await.unwrap();
        Arc::new(s)
    };
    let fake = FakeOrchestrator::new().with_gpus(1);
    let (broker, token) = broker(store.clone(), &fake).await;
    let reaper = tokio::spawn(broker.clone().run_reaper(std::future::pending()));

    let (status, job) = submit(&broker, &token, gpu_job("a", &["sleep", "3"])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    within(Duration::from_secs(20), "job running", async || {
        let r = store.get_job(&id).await.unwrap().unwrap();
        (r.state == JobState::Running).then_some(())
    })
    .await;
    assert_eq!(store.gpu_leases().await.unwrap().len(), 1);

    // The job ends (3 s after its start) while the database is down, and
    // stays down well past any short retry budget.
    pg.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        fake.specs().iter().any(|s| s.id == id),
        "the job was run by the cluster"
    );
    pg.start();

    // Same broker, no restart: the end lands as the job's real ending…
    let record = within(
        Duration::from_secs(60),
        "terminal record",
        async || match store.get_job(&id).await {
            Ok(Some(r)) if r.state.is_terminal() => Some(r),
            _ => None,
        },
    )
    .await;
    assert_eq!(record.state, JobState::Succeeded, "{record:?}");
    assert_eq!(record.exit_code, Some(0));
    // …and the lease and the slot are back: a new GPU job is admitted.
    assert!(store.gpu_leases().await.unwrap().is_empty());
    let (status, next) = submit(&broker, &token, gpu_job("b", &["echo", "again"])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{next}");
    assert!(
        !fake.live_jobs().contains(&id),
        "the ended job's service is removed"
    );
    reaper.abort();
}

/// A record left open with its lease and no service (a master that died
/// between removing the job's service and writing its end, and no restart
/// since): the reaper finishes it within a pass or two.
async fn reaper_repairs_a_record_whose_service_is_gone(store: Arc<dyn Store>) {
    let fake = FakeOrchestrator::new().with_gpus(1);
    let (broker, token) = broker(store.clone(), &fake).await;
    let now = base_sdk::model::now();
    let orphan = JobRecord {
        id: "00000000deadbeef".into(),
        slug: Slug::parse("agent").unwrap(),
        job_id: "lost".into(),
        task_id: None,
        image: IMAGE.into(),
        state: JobState::Running,
        spec: json!({"timeout_seconds": 600}),
        node_id: None,
        gpu_count: 1,
        exit_code: None,
        error: None,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        created_at: now,
        started_at: Some(now),
        finished_at: None,
        deadline_at: Some(now + chrono::TimeDelta::seconds(1200)),
    };
    assert_eq!(
        store.admit_job(&orphan, Some(1), 1).await.unwrap(),
        Admission::Admitted
    );
    // The slot and the lease are taken.
    let (status, _) = submit(&broker, &token, gpu_job("x", &["echo"])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    broker.reap_once().await.unwrap();
    let record = store.get_job(&orphan.id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Failed, "{record:?}");
    assert!(
        record.error.as_deref().unwrap_or("").contains("gone"),
        "{record:?}"
    );
    assert!(store.gpu_leases().await.unwrap().is_empty());
    let open = store
        .list_jobs(&JobFilter {
            active_only: true,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert!(open.is_empty(), "{open:?}");
    let (status, body) = submit(&broker, &token, gpu_job("y", &["echo"])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

/// The reaper never takes a job its own broker is driving for an abandoned
/// one, however it interleaves with submissions.
async fn reaper_leaves_driven_jobs_alone(store: Arc<dyn Store>) {
    let fake = FakeOrchestrator::new().with_start_delay(Duration::from_millis(300));
    let (broker, token) = broker(store.clone(), &fake).await;
    let reaper = tokio::spawn(broker.clone().run_reaper(std::future::pending()));
    let (status, job) = submit(
        &broker,
        &token,
        json!({"job_id": "d", "image": IMAGE, "command": ["sleep", "1"]}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    for _ in 0..5 {
        broker.reap_once().await.unwrap();
    }
    let record = within(Duration::from_secs(20), "job ends", async || {
        let r = store.get_job(&id).await.unwrap().unwrap();
        r.state.is_terminal().then_some(r)
    })
    .await;
    assert_eq!(record.state, JobState::Succeeded, "{record:?}");
    reaper.abort();
}

base_sdk::backend_tests!(
    reaper_repairs_a_record_whose_service_is_gone,
    reaper_leaves_driven_jobs_alone,
);
