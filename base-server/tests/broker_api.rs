//! HTTP-level tests of the broker (`:18082`) against the in-memory fake
//! orchestrator: the Python platform's golden shapes (run, GPU run,
//! privileged 403, cleanup, list), auth, quotas, GPU leases on every path,
//! timeouts counted from the start, cancel, logs, recovery and the reaper.
//! Run on both store backends (PostgreSQL ones need `scripts/test.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base_sdk::broker::{Broker, BrokerConfig};
use base_sdk::config::Environment;
use base_sdk::model::{BrokerPolicy, JobFilter};
use base_sdk::orchestrator::{JobState, Orchestrator};
use base_sdk::registry::{NewChallenge, Registry};
use base_sdk::store::Store;
use base_sdk::testing::FakeOrchestrator;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tower::ServiceExt;

const IMAGE: &str = "ghcr.io/platformnetwork/eval:1.0.0";

struct Harness {
    store: Arc<dyn Store>,
    fake: FakeOrchestrator,
    broker: Broker,
    token: String,
}

async fn harness(store: Arc<dyn Store>, fake: FakeOrchestrator, policy: BrokerPolicy) -> Harness {
    let registry = Registry::new(store.clone(), Environment::Development);
    let (_, tokens) = registry
        .create(
            NewChallenge {
                slug: "agent".into(),
                name: "Agent".into(),
                image: "ghcr.io/platformnetwork/agent:1.0.0".into(),
                version: "1.0.0".into(),
                broker: Some(policy),
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
        store.clone(),
        Arc::new(fake.clone()) as Arc<dyn Orchestrator>,
        BrokerConfig {
            reap_interval: Duration::from_millis(100),
            ..BrokerConfig::default()
        },
    );
    Harness {
        store,
        fake,
        broker,
        token,
    }
}

impl Harness {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(method, path, body, Some("agent"), Some(&self.token))
            .await
    }

    async fn call_as(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        slug: Option<&str>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(s) = slug {
            req = req.header("X-Base-Challenge-Slug", s);
        }
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = base_server::broker::app(self.broker.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    async fn leases(&self) -> usize {
        self.store.gpu_leases().await.unwrap().len()
    }

    async fn open_jobs(&self) -> usize {
        self.store
            .list_jobs(&JobFilter {
                active_only: true,
                ..JobFilter::default()
            })
            .await
            .unwrap()
            .len()
    }
}

fn run_request(job_id: &str, command: &[&str]) -> Value {
    json!({"job_id": job_id, "image": IMAGE, "command": command})
}

/// Waits (bounded) for `check` to hold; the fake's jobs finish on their own
/// tasks, so some effects land a moment after the call that caused them.
async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached in 5 s");
}

async fn golden_run_returns_output_and_returncode(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    let (status, body) = h
        .call(
            "POST",
            "/v1/docker/run",
            Some(run_request("job-1", &["echo", "hello"])),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "container_name",
            "returncode",
            "stderr",
            "stdout",
            "timed_out"
        ]
    );
    assert_eq!(body["stdout"], "hello\n");
    assert_eq!(body["stderr"], "");
    assert_eq!(body["returncode"], 0);
    assert_eq!(body["timed_out"], false);
    assert!(
        body["container_name"]
            .as_str()
            .unwrap()
            .starts_with("base-job-")
    );

    // A failing job reports its own exit code, still 200.
    let (status, body) = h
        .call(
            "POST",
            "/v1/docker/run",
            Some(run_request("job-2", &["exit", "3"])),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["returncode"], 3);

    // Hardening defaults reached the orchestrator.
    let spec = &h.fake.specs()[0];
    assert!(spec.limits.read_only && spec.limits.init);
    assert_eq!(spec.limits.cap_drop, ["ALL"]);
    assert_eq!(spec.limits.gpus, None);
    assert_eq!(spec.timeout_seconds, 900);
    // Nothing is left: services removed, records terminal.
    assert!(h.fake.live_jobs().is_empty());
    assert_eq!(h.open_jobs().await, 0);
}

async fn golden_gpu_run_leases_and_releases(store: Arc<dyn Store>) {
    let h = harness(
        store,
        FakeOrchestrator::new().with_gpus(1),
        BrokerPolicy::default(),
    )
    .await;
    let mut req = run_request("gpu-1", &["echo", "cuda"]);
    req["limits"] = json!({"gpu_count": 1});
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "cuda\n");
    assert_eq!(h.fake.specs()[0].limits.gpus, Some(1));
    assert_eq!(h.leases().await, 0, "lease released after success");

    // While one GPU job holds the only GPU, a second is refused with 429.
    let mut long = run_request("gpu-2", &["sleep", "30"]);
    long["limits"] = json!({"gpu_count": 1});
    let (status, held) = h.call("POST", "/v1/jobs", Some(long)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{held}");
    assert_eq!(h.leases().await, 1);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body["detail"],
        "docker_quota_exceeded: no GPU capacity for 1 GPU(s) (1/1 leased)"
    );
    // Cancelling frees it.
    let id = held["id"].as_str().unwrap();
    let (status, body) = h.call("DELETE", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "cancelled");
    assert_eq!(h.leases().await, 0, "lease released after cancel");
    assert!(h.fake.live_jobs().is_empty());
}

async fn gpu_jobs_need_advertised_capacity(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    let mut req = run_request("gpu", &["echo"]);
    req["limits"] = json!({"gpu_count": 2});
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body["detail"],
        "docker_quota_exceeded: no GPU capacity for 2 GPU(s) (0/0 leased)"
    );
    assert!(h.fake.specs().is_empty());
    assert_eq!(h.open_jobs().await, 0);
}

async fn golden_privileged_is_403_and_creates_nothing(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    let mut req = run_request("priv", &["echo"]);
    req["limits"] = json!({"privileged": true});
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"detail": "privileged broker jobs require the allowlisted escape hatch"})
    );
    assert!(h.fake.specs().is_empty());
    assert!(
        h.store
            .list_jobs(&JobFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn allowlisted_privileged_is_refused_not_downgraded(store: Arc<dyn Store>) {
    let policy = BrokerPolicy {
        allow_privileged: true,
        ..BrokerPolicy::default()
    };
    let h = harness(store, FakeOrchestrator::new(), policy).await;
    let mut req = run_request("priv", &["echo"]);
    req["limits"] = json!({"privileged": true});
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["detail"],
        "privileged broker jobs are allowlisted for 'agent' but the fake orchestrator cannot run them"
    );
    assert!(h.fake.specs().is_empty());
}

async fn hardening_and_image_rules_use_the_python_messages(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    for (limits, detail) in [
        (
            json!({"read_only": false}),
            "broker Docker jobs require a read-only root filesystem",
        ),
        (
            json!({"init": false}),
            "broker Docker jobs require Docker init for process cleanup",
        ),
        (
            json!({"cap_drop": []}),
            "broker Docker jobs must drop all Linux capabilities",
        ),
        (
            json!({"security_opt": []}),
            "broker Docker jobs require no-new-privileges",
        ),
    ] {
        let mut req = run_request("h", &["echo"]);
        req["limits"] = limits;
        let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
        assert_eq!(
            (status, body["detail"].as_str().unwrap()),
            (StatusCode::BAD_REQUEST, detail)
        );
    }
    let mut req = run_request("img", &["echo"]);
    req["image"] = json!("docker.io/evil/miner:latest");
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let mut req = run_request("net", &["echo"]);
    req["limits"] = json!({"network": "base_challenges"});
    let (status, _) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Shape errors are 422, as FastAPI answered.
    let (status, _) = h
        .call("POST", "/v1/docker/run", Some(json!({"job_id": "x"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(h.fake.specs().is_empty());
}

async fn auth_rules(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    let body = Some(json!({}));
    let (status, b) = h
        .call_as(
            "POST",
            "/v1/docker/list",
            body.clone(),
            None,
            Some(&h.token),
        )
        .await;
    assert_eq!(
        (status, b["detail"].as_str()),
        (StatusCode::BAD_REQUEST, Some("missing challenge slug"))
    );
    let (status, b) = h
        .call_as(
            "POST",
            "/v1/docker/list",
            body.clone(),
            Some("nobody"),
            Some(&h.token),
        )
        .await;
    assert_eq!(
        (status, b["detail"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unknown challenge"))
    );
    let (status, b) = h
        .call_as(
            "POST",
            "/v1/docker/list",
            body.clone(),
            Some("agent"),
            Some("wrong"),
        )
        .await;
    assert_eq!(
        (status, b["detail"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid broker token"))
    );
    let (status, b) = h
        .call_as("POST", "/v1/docker/list", body, Some("agent"), None)
        .await;
    assert_eq!(
        (status, b["detail"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid broker token"))
    );
}

async fn golden_list_and_cleanup(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    let mut req = run_request("batch-7", &["sleep", "30"]);
    req["task_id"] = json!("task-a");
    req["labels"] = json!({"team": "x"});
    let (status, submitted) = h.call("POST", "/v1/jobs", Some(req)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    let (_, other) = h
        .call(
            "POST",
            "/v1/jobs",
            Some(run_request("batch-8", &["sleep", "30"])),
        )
        .await;

    let (status, body) = h
        .call(
            "POST",
            "/v1/docker/list",
            Some(json!({"job_id": "batch-7"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let containers = body["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "container_id",
            "container_name",
            "created",
            "image",
            "job_id",
            "labels",
            "status",
            "task_id"
        ]
    );
    assert_eq!(c["job_id"], "batch-7");
    assert_eq!(c["task_id"], "task-a");
    assert_eq!(c["image"], IMAGE);
    assert_eq!(c["labels"]["base.challenge"], "agent");
    assert_eq!(
        c["container_name"],
        format!("base-job-{}", submitted["id"].as_str().unwrap())
    );
    let (_, all) = h.call("POST", "/v1/docker/list", Some(json!({}))).await;
    assert_eq!(all["containers"].as_array().unwrap().len(), 2);

    let (status, body) = h
        .call(
            "POST",
            "/v1/docker/cleanup",
            Some(json!({"job_id": "batch-7"})),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (_, after) = h.call("POST", "/v1/docker/list", Some(json!({}))).await;
    let left = after["containers"].as_array().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["job_id"], "batch-8");
    assert_eq!(
        h.fake.live_jobs(),
        [other["id"].as_str().unwrap().to_string()]
    );
    // Cleanup of an unknown job id is still ok (idempotent).
    let (status, _) = h
        .call(
            "POST",
            "/v1/docker/cleanup",
            Some(json!({"job_id": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn quota_is_429_with_the_python_message(store: Arc<dyn Store>) {
    let policy = BrokerPolicy {
        max_concurrent_jobs: Some(1),
        ..BrokerPolicy::default()
    };
    let h = harness(store, FakeOrchestrator::new(), policy).await;
    let (status, first) = h
        .call("POST", "/v1/jobs", Some(run_request("a", &["sleep", "30"])))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = h
        .call("POST", "/v1/docker/run", Some(run_request("b", &["echo"])))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        body["detail"],
        "docker_quota_exceeded: challenge 'agent' is at its concurrency cap (1/1 active workloads)"
    );
    h.call(
        "DELETE",
        &format!("/v1/jobs/{}", first["id"].as_str().unwrap()),
        None,
    )
    .await;
    let (status, _) = h
        .call("POST", "/v1/docker/run", Some(run_request("b", &["echo"])))
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn timeout_counts_from_start_and_is_124(store: Arc<dyn Store>) {
    // The job waits 1.5 s before it starts (as if pulling) and then runs
    // past its 1 s timeout: it must be stopped 1 s after the start, not at
    // creation + 1 s (which would be before it started).
    let fake = FakeOrchestrator::new()
        .with_gpus(1)
        .with_start_delay(Duration::from_millis(1500));
    let h = harness(store, fake, BrokerPolicy::default()).await;
    let mut req = run_request("slow", &["sleep", "30"]);
    req["timeout_seconds"] = json!(1);
    req["limits"] = json!({"gpu_count": 1});
    let started = std::time::Instant::now();
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["returncode"], 124);
    assert_eq!(body["timed_out"], true);
    assert!(
        elapsed >= Duration::from_millis(2400),
        "stopped before start + timeout: {elapsed:?}"
    );
    assert_eq!(h.leases().await, 0, "lease released after timeout");
    assert!(h.fake.live_jobs().is_empty());
    let jobs = h.store.list_jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(jobs[0].state, JobState::TimedOut);
    assert!(jobs[0].started_at.is_some());
}

async fn async_api_states_logs_and_wait(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    let (status, job) = h
        .call(
            "POST",
            "/v1/jobs",
            Some(run_request("j", &["stderr", "warn"])),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(job["state"], "queued");
    let id = job["id"].as_str().unwrap();
    let (status, done) = h.call("GET", &format!("/v1/jobs/{id}?wait=10"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["exit_code"], 0);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    let (_, logs) = h.call("GET", &format!("/v1/jobs/{id}/logs"), None).await;
    assert_eq!(logs["stderr"], "warn\n");
    assert_eq!(logs["stdout"], "");
    let (status, lines) = h
        .call("GET", &format!("/v1/jobs/{id}/logs?follow=true"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lines, json!({"stream": "stderr", "data": "warn\n"}));
    let (_, list) = h.call("GET", "/v1/jobs", None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    // Another challenge cannot see it.
    let (status, _) = h
        .call_as(
            "GET",
            &format!("/v1/jobs/{id}"),
            None,
            Some("agent"),
            Some(&h.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h.call("GET", "/v1/jobs/0123456789abcdef", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn mounts_reach_the_job(store: Arc<dyn Store>) {
    use base64::Engine;
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let data = b"payload\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "input.txt", &data[..])
        .unwrap();
    let gz = tar.into_inner().unwrap().finish().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut req = run_request("m", &["cat", "/work/input.txt"]);
    req["mounts"] = json!([{"target": "/work", "archive_b64": b64}]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "payload\n");
    // A file mount places the one file at its target.
    let mut req = run_request("f", &["cat", "/etc/task.txt"]);
    req["mounts"] = json!([{"target": "/etc/task.txt", "source_type": "file", "archive_b64": b64}]);
    let (_, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(body["stdout"], "payload\n");
    // A bad archive is 400 and nothing runs.
    let mut req = run_request("bad", &["echo"]);
    req["mounts"] = json!([{"target": "/work", "archive_b64": "not base64!"}]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["detail"],
        "mount '/work': mount archive is not valid base64"
    );
    assert_eq!(h.fake.specs().len(), 2);
}

fn archive(files: &[(&str, &[u8])]) -> String {
    use base64::Engine;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, path, *data).unwrap();
    }
    let gz = tar.into_inner().unwrap().finish().unwrap();
    base64::engine::general_purpose::STANDARD.encode(gz)
}

fn unpacked(output: &Value) -> std::collections::BTreeMap<String, Vec<u8>> {
    let out: base_sdk::model::JobOutput = serde_json::from_value(output.clone()).unwrap();
    base_sdk::broker::client::output_files(&out).unwrap()
}

async fn writable_mounts_come_back_to_the_caller(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    // Synchronous run: a seeded writable mount and an empty one; the job
    // appends to the seed and writes a new file.
    let mut req = run_request("w", &["write", "/work/notes.txt", "appended"]);
    req["mounts"] = json!([
        {"target": "/work", "read_only": false, "archive_b64": archive(&[("notes.txt", b"seed\n")])},
        {"target": "/in", "archive_b64": archive(&[("x", b"read-only")])},
        {"target": "/out/", "read_only": false, "archive_b64": ""},
    ]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["returncode"], 0);
    let outputs = body["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 2, "one per writable mount, in order: {body}");
    assert_eq!(outputs[0]["target"], "/work");
    assert_eq!(
        unpacked(&outputs[0]).get("notes.txt").map(Vec::as_slice),
        Some(&b"seed\nappended\n"[..])
    );
    assert_eq!(outputs[1]["target"], "/out");
    assert!(unpacked(&outputs[1]).is_empty());

    // The same through the asynchronous API, after the job ended.
    let id = body["container_name"]
        .as_str()
        .unwrap()
        .trim_start_matches("base-job-")
        .to_string();
    let (status, listed) = h.call("GET", &format!("/v1/jobs/{id}/outputs"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["outputs"], body["outputs"]);
    // Another challenge cannot read them.
    let (status, _) = h
        .call_as(
            "GET",
            &format!("/v1/jobs/{id}/outputs"),
            None,
            Some("other"),
            Some(&h.token),
        )
        .await;
    assert_ne!(status, StatusCode::OK);

    // Without writable mounts the answer keeps the Python shape exactly.
    let (_, plain) = h
        .call(
            "POST",
            "/v1/docker/run",
            Some(run_request("p", &["echo", "hi"])),
        )
        .await;
    assert!(plain.get("outputs").is_none(), "{plain}");

    // A writable single file is refused before anything runs.
    let specs = h.fake.specs().len();
    let mut req = run_request("f", &["echo"]);
    req["mounts"] = json!([{"target": "/out.txt", "read_only": false, "source_type": "file", "archive_b64": archive(&[("a", b"a")])}]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("a writable mount must be a directory"),
        "{body}"
    );
    assert_eq!(h.fake.specs().len(), specs);

    // A job that is stopped does not return its mounts, and says so.
    let mut req = run_request("c", &["sleep", "30"]);
    req["mounts"] = json!([{"target": "/out", "read_only": false, "archive_b64": ""}]);
    let (status, job) = h.call("POST", "/v1/jobs", Some(req)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let (status, _) = h.call("DELETE", &format!("/v1/jobs/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = h.call("GET", &format!("/v1/jobs/{id}/outputs"), None).await;
    assert_eq!(listed["outputs"][0]["target"], "/out");
    assert!(listed["outputs"][0]["archive_b64"].is_null());
    assert!(
        listed["outputs"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not collected"),
        "{listed}"
    );
}

async fn recovery_after_a_crash_leaks_nothing(store: Arc<dyn Store>) {
    // The first broker "dies" with three unfinished jobs (one holding a
    // GPU, one whose service vanished meanwhile); a new broker over the
    // same store and cluster must finish or resume each, and remove a job
    // service no record explains.
    let fake = FakeOrchestrator::new().with_gpus(2);
    let h = harness(store, fake.clone(), BrokerPolicy::default()).await;
    let mut gpu = run_request("g", &["sleep", "0.3"]);
    gpu["limits"] = json!({"gpu_count": 2});
    let (_, g) = h.call("POST", "/v1/jobs", Some(gpu)).await;
    let (_, lost) = h
        .call(
            "POST",
            "/v1/jobs",
            Some(run_request("l", &["never-starts"])),
        )
        .await;
    assert_eq!(h.leases().await, 1);
    // The broker dies: its drivers let go, jobs keep running.
    h.broker.halt();
    // The service of `lost` disappears behind the broker's back, and an
    // unrecorded job service appears.
    fake.remove_job(lost["id"].as_str().unwrap()).await.unwrap();
    let mut orphan = fake.specs()[0].clone();
    orphan.id = "feedfacefeedface".into();
    fake.run_job(&orphan).await.unwrap();

    let restarted = Broker::new(
        h.store.clone(),
        Arc::new(fake.clone()) as Arc<dyn Orchestrator>,
        BrokerConfig::default(),
    );
    let report = restarted.recover().await.unwrap();
    assert_eq!(report.orphans_removed, 1, "{report:?}");
    // The lost job is finished by recovery (its driver is dead); the GPU
    // job is resumed, or finished if it ended meanwhile.
    assert!(report.finished >= 1, "{report:?}");
    assert_eq!(report.finished + report.resumed, 2, "{report:?}");
    let lost_record = h
        .store
        .get_job(lost["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lost_record.state, JobState::Failed);
    eventually(async || h.open_jobs().await == 0).await;
    assert_eq!(h.leases().await, 0);
    assert!(fake.live_jobs().is_empty());
    let g_record = h
        .store
        .get_job(g["id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g_record.state, JobState::Succeeded);
}

async fn reaper_times_out_from_cluster_labels(store: Arc<dyn Store>) {
    // A job whose driver is gone (a previous broker) is timed out by the
    // reaper from the cluster's own view: started_at + base.timeout.
    let fake = FakeOrchestrator::new();
    let h = harness(store, fake.clone(), BrokerPolicy::default()).await;
    let mut req = run_request("r", &["sleep", "30"]);
    req["timeout_seconds"] = json!(2);
    let submitted = std::time::Instant::now();
    let (_, job) = h.call("POST", "/v1/jobs", Some(req)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let other = Broker::new(
        h.store.clone(),
        Arc::new(fake.clone()) as Arc<dyn Orchestrator>,
        BrokerConfig::default(),
    );
    let acted = other.reap_once().await.unwrap();
    // Only meaningful while the job is surely not overdue (a loaded
    // machine may take seconds to get here).
    if submitted.elapsed() < Duration::from_millis(1500) {
        assert_eq!(acted, 0, "not overdue yet");
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // Either broker may act first; the job ends timed out exactly once.
    let _ = other.reap_once().await.unwrap();
    eventually(async || h.store.get_job(&id).await.unwrap().unwrap().state == JobState::TimedOut)
        .await;
    let record = h.store.get_job(&id).await.unwrap().unwrap();
    assert_eq!(record.exit_code, Some(124));
    assert!(fake.live_jobs().is_empty());
}

base_sdk::backend_tests!(
    golden_run_returns_output_and_returncode,
    golden_gpu_run_leases_and_releases,
    gpu_jobs_need_advertised_capacity,
    golden_privileged_is_403_and_creates_nothing,
    allowlisted_privileged_is_refused_not_downgraded,
    hardening_and_image_rules_use_the_python_messages,
    auth_rules,
    golden_list_and_cleanup,
    quota_is_429_with_the_python_message,
    timeout_counts_from_start_and_is_124,
    async_api_states_logs_and_wait,
    mounts_reach_the_job,
    writable_mounts_come_back_to_the_caller,
    recovery_after_a_crash_leaks_nothing,
    reaper_times_out_from_cluster_labels,
    a_job_whose_image_cannot_be_pulled_is_125_never_success,
    a_job_no_node_takes_ends_failed_after_the_schedule_wait,
    gpu_and_scheduling_env_names_are_400_naming_them,
    mount_count_and_base64_are_bounded_before_decoding,
    a_job_mount_budget_caps_the_config_bytes_and_files_it_creates,
    a_default_per_challenge_cap_applies_without_a_policy,
    default_total_cap_counts_every_challenge,
    mount_archives_decode_off_the_runtime,
);

// ---- issue 13: jobs that never ran, reserved env, mount and job caps ----

/// A harness whose broker has `config` (the reaper interval stays short).
async fn harness_with(
    store: Arc<dyn Store>,
    fake: FakeOrchestrator,
    policy: BrokerPolicy,
    config: BrokerConfig,
) -> Harness {
    let mut h = harness(store, fake, policy).await;
    h.broker = Broker::new(
        h.store.clone(),
        Arc::new(h.fake.clone()) as Arc<dyn Orchestrator>,
        BrokerConfig {
            reap_interval: Duration::from_millis(100),
            ..config
        },
    );
    h
}

async fn a_job_whose_image_cannot_be_pulled_is_125_never_success(store: Arc<dyn Store>) {
    // The fake reports such a job as Docker 20.10 does: rejected, exit
    // code 0, no container. It never ran, so it may not look like success.
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    let mut req = run_request("pull", &["echo", "never printed"]);
    req["image"] = json!("ghcr.io/platformnetwork/eval:missing");
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["returncode"], 125, "{body}");
    assert_eq!(body["timed_out"], false);
    assert_eq!(body["stdout"], "");
    let stderr = body["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("No such image: ghcr.io/platformnetwork/eval:missing"),
        "{stderr}"
    );
    let jobs = h.store.list_jobs(&JobFilter::default()).await.unwrap();
    let (status, job) = h
        .call("GET", &format!("/v1/jobs/{}", jobs[0].id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(job["exit_code"].is_null(), "{job}");
    assert_eq!(
        job["error"],
        "the job could not run: No such image: ghcr.io/platformnetwork/eval:missing"
    );
    assert!(h.fake.live_jobs().is_empty());

    // With a writable mount: nothing comes back from a job that never ran
    // (the fake would hand back the seed, as if the job had left it).
    let mut req = run_request("pull-out", &["echo"]);
    req["image"] = json!("ghcr.io/platformnetwork/eval:missing");
    req["mounts"] = json!([{"target": "/out", "read_only": false, "archive_b64": archive(&[("seed.txt", b"seed")])}]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["returncode"], 125, "{body}");
    assert_eq!(
        body["outputs"],
        json!([{"target": "/out", "error": "not collected: the job never ran"}])
    );
}

async fn a_job_no_node_takes_ends_failed_after_the_schedule_wait(store: Arc<dyn Store>) {
    let h = harness_with(
        store,
        FakeOrchestrator::new().with_gpus(1),
        BrokerPolicy::default(),
        BrokerConfig {
            schedule_timeout: Duration::from_secs(1),
            ..BrokerConfig::default()
        },
    )
    .await;
    let mut req = run_request("stuck", &["never-starts"]);
    req["timeout_seconds"] = json!(600);
    req["limits"] = json!({"gpu_count": 1});
    // Liveness bound, not a speed assertion: without the schedule wait the
    // job would sit queued until its deadline (600 s + the start grace).
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(30),
        h.call("POST", "/v1/docker/run", Some(req)),
    )
    .await
    .expect("a job no node takes ends after the schedule wait");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["returncode"], 125, "{body}");
    assert_eq!(body["timed_out"], false);
    let stderr = body["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("the job could not run: no node took it within 1 s: no suitable node"),
        "{stderr}"
    );
    let jobs = h.store.list_jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(jobs[0].state, JobState::Failed);
    assert_eq!(jobs[0].exit_code, None);
    assert_eq!(h.leases().await, 0, "the GPU lease is released");
    assert!(h.fake.live_jobs().is_empty());
}

async fn gpu_and_scheduling_env_names_are_400_naming_them(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    for name in [
        "NVIDIA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
        "DOCKER_RESOURCE_NVIDIA_GPU",
        "CUDA_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
    ] {
        let mut req = run_request("env", &["echo"]);
        req["env"] = json!({"OK_NAME": "1", name: "all"});
        let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert_eq!(
            body["detail"],
            format!(
                "env '{name}' is reserved: it selects GPUs or scheduled resources, which the broker assigns"
            )
        );
    }
    assert!(h.fake.specs().is_empty(), "nothing was created");
    assert_eq!(h.open_jobs().await, 0);
}

/// Many files of `size` zero bytes each, as base64 of a gzip tar (zeros
/// compress to almost nothing: what a decompression bomb looks like).
fn zeros_archive(files: usize, size: usize) -> String {
    let data = vec![0u8; size];
    let names: Vec<String> = (0..files).map(|i| format!("f{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &data[..])).collect();
    archive(&entries)
}

async fn mount_count_and_base64_are_bounded_before_decoding(store: Arc<dyn Store>) {
    let h = harness_with(
        store,
        FakeOrchestrator::new(),
        BrokerPolicy::default(),
        BrokerConfig {
            mount_budget: base_sdk::broker::request::MountBudget {
                max_encoded_bytes: 1000,
                ..Default::default()
            },
            ..BrokerConfig::default()
        },
    )
    .await;
    // Seventeen mounts (the default cap is 16): refused by count.
    let small = archive(&[("a", b"1")]);
    let mounts: Vec<Value> = (0..17)
        .map(|i| json!({"target": format!("/m{i}"), "archive_b64": small}))
        .collect();
    let mut req = run_request("many", &["echo"]);
    req["mounts"] = json!(mounts);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["detail"],
        "a job may have at most 16 mounts (17 given)"
    );

    // Two archives of 600 bytes of base64 each, whose contents are not
    // even gzip: the total is refused before any of it is decoded (today
    // the first archive's decoding would answer "not valid gzip").
    let junk = "A".repeat(600);
    let mut req = run_request("big", &["echo"]);
    req["mounts"] = json!([
        {"target": "/a", "archive_b64": junk},
        {"target": "/b", "archive_b64": junk},
    ]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["detail"],
        "the job's mount archives are 1200 bytes of base64 in all; at most 1000 are accepted"
    );
    assert!(h.fake.specs().is_empty());
    assert_eq!(h.open_jobs().await, 0);
}

async fn a_job_mount_budget_caps_the_config_bytes_and_files_it_creates(store: Arc<dyn Store>) {
    let h = harness(store, FakeOrchestrator::new(), BrokerPolicy::default()).await;
    // 3 × 8 MiB in one archive: within one archive's own limits (64 MiB),
    // over the 16 MiB of files one job may bring (Swarm configs); inflating
    // stops at the job's budget.
    let mut req = run_request("bytes", &["echo"]);
    req["mounts"] = json!([{"target": "/in", "archive_b64": zeros_archive(3, 8 << 20)}]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["detail"],
        format!(
            "mount '/in': the job's mounted files would exceed {} bytes in all; at most that many \
             are accepted per job (on Swarm they are configs, replicated to every manager)",
            16 << 20
        )
    );
    // Split over two mounts (8 + 9 MiB): the second one hits what is left.
    let mut req = run_request("bytes2", &["echo"]);
    req["mounts"] = json!([
        {"target": "/a", "archive_b64": zeros_archive(1, 8 << 20)},
        {"target": "/b", "archive_b64": zeros_archive(1, 9 << 20)},
    ]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("the job's mounted files are 17825792 bytes in all; at most 16777216")
            || body["detail"]
                .as_str()
                .unwrap()
                .starts_with("mount '/b': the job's mounted files would exceed"),
        "{body}"
    );
    // 300 empty files: each would be one Swarm config; 256 is the cap.
    let mut req = run_request("files", &["echo"]);
    req["mounts"] = json!([{"target": "/in", "archive_b64": zeros_archive(300, 0)}]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["detail"],
        "the job's mounts hold 300 files; at most 256 are accepted per job (on Swarm each is a config object)"
    );
    assert!(h.fake.specs().is_empty());
    // At the caps it runs.
    let mut req = run_request("fits", &["echo", "ok"]);
    req["mounts"] = json!([{"target": "/in", "archive_b64": zeros_archive(2, 8 << 20)}]);
    let (status, body) = h.call("POST", "/v1/docker/run", Some(req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["returncode"], 0);
}

async fn a_default_per_challenge_cap_applies_without_a_policy(store: Arc<dyn Store>) {
    // No max_concurrent_jobs in the challenge's policy: the broker's
    // default per-challenge cap applies.
    let h = harness_with(
        store.clone(),
        FakeOrchestrator::new(),
        BrokerPolicy::default(),
        BrokerConfig {
            max_jobs_per_challenge: Some(1),
            max_jobs: None,
            ..BrokerConfig::default()
        },
    )
    .await;
    let (status, first) = h
        .call("POST", "/v1/jobs", Some(run_request("a", &["sleep", "30"])))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, body) = h
        .call("POST", "/v1/jobs", Some(run_request("b", &["echo"])))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body["detail"],
        "docker_quota_exceeded: challenge 'agent' is at its concurrency cap (1/1 active workloads)"
    );
    h.call(
        "DELETE",
        &format!("/v1/jobs/{}", first["id"].as_str().unwrap()),
        None,
    )
    .await;
}

async fn default_total_cap_counts_every_challenge(store: Arc<dyn Store>) {
    // The total cap counts every challenge's unfinished jobs, whatever a
    // challenge's own policy allows.
    let policy = BrokerPolicy {
        max_concurrent_jobs: Some(100),
        ..BrokerPolicy::default()
    };
    let h = harness_with(
        store.clone(),
        FakeOrchestrator::new(),
        policy,
        BrokerConfig {
            max_jobs: Some(2),
            ..BrokerConfig::default()
        },
    )
    .await;
    let (_, tokens) = Registry::new(store, Environment::Development)
        .create(
            NewChallenge {
                slug: "other".into(),
                name: "Other".into(),
                image: "ghcr.io/platformnetwork/other:1.0.0".into(),
                version: "1.0.0".into(),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    let other_token = tokens
        .docker_broker_token
        .unwrap()
        .expose_secret()
        .to_string();
    let (status, first) = h
        .call("POST", "/v1/jobs", Some(run_request("a", &["sleep", "30"])))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, body) = h
        .call_as(
            "POST",
            "/v1/jobs",
            Some(run_request("b", &["sleep", "30"])),
            Some("other"),
            Some(&other_token),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = h
        .call("POST", "/v1/docker/run", Some(run_request("c", &["echo"])))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        body["detail"],
        "docker_quota_exceeded: the broker is at its total concurrency cap (2/2 active workloads)"
    );
    assert_eq!(h.fake.specs().len(), 2, "the refused job was not created");
    h.call(
        "DELETE",
        &format!("/v1/jobs/{}", first["id"].as_str().unwrap()),
        None,
    )
    .await;
    let (status, body) = h
        .call("POST", "/v1/docker/run", Some(run_request("c", &["echo"])))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn mount_archives_decode_off_the_runtime(store: Arc<dyn Store>) {
    // `backend_tests!` runs this on tokio's current-thread runtime: one
    // thread for every task. Decoding a large archive on it would stop the
    // ticker below for as long as the decoding takes; decoded on a
    // blocking thread, the ticker keeps firing.
    //
    // The archive inflates 60 MiB (the job budget raised to allow it) and
    // then ends in a symlink, which is refused: the request is all
    // decoding, with no job to create afterwards.
    let h = harness_with(
        store,
        FakeOrchestrator::new(),
        BrokerPolicy::default(),
        BrokerConfig {
            mount_budget: base_sdk::broker::request::MountBudget {
                max_file_bytes: 64 << 20,
                ..Default::default()
            },
            ..BrokerConfig::default()
        },
    )
    .await;
    let b64 = {
        use base64::Engine;
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::default(),
        ));
        let zeros = vec![0u8; 15 << 20];
        for i in 0..4 {
            let mut header = tar::Header::new_gnu();
            header.set_size(zeros.len() as u64);
            header.set_mode(0o644);
            tar.append_data(&mut header, format!("f{i}"), &zeros[..])
                .unwrap();
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        tar.append_link(&mut link, "last", "/etc/passwd").unwrap();
        let gz = tar.into_inner().unwrap().finish().unwrap();
        base64::engine::general_purpose::STANDARD.encode(gz)
    };
    let mut req = run_request("big", &["echo", "done"]);
    req["mounts"] = json!([{"target": "/in", "archive_b64": b64}]);
    let ticks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ticker = {
        let ticks = Arc::clone(&ticks);
        tokio::spawn(async move {
            loop {
                ticks.lock().unwrap().push(std::time::Instant::now());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let begun = std::time::Instant::now();
    let (status, body) = h.call("POST", "/v1/jobs", Some(req)).await;
    let ended = std::time::Instant::now();
    ticker.abort();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("symbolic link"),
        "the whole archive was read: {body}"
    );
    let ticks = ticks.lock().unwrap().clone();
    let during: Vec<_> = std::iter::once(begun)
        .chain(ticks.into_iter().filter(|t| *t > begun && *t < ended))
        .chain(std::iter::once(ended))
        .collect();
    let longest = during
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let total = ended - begun;
    eprintln!("longest silence {longest:?} of a {total:?} submission");
    // Decoding dominates the request; on the runtime thread it would be
    // one silent gap of most of `total`.
    assert!(
        longest * 2 < total,
        "the runtime stalled for {longest:?} of a {total:?} submission"
    );
}
