//! The Swarm orchestrator against a real Docker engine.
//!
//! Fakes prove the mapping; only an engine proves that the engine accepts
//! it, schedules it, mounts the secrets where the contract says, and keeps
//! the tokens out of everything an operator can read. Every test here needs
//! a single-node Swarm whose node is labelled `base.workload=cpu` and the
//! example image `base.local/quiz-challenge:0.1.0` (scripts/build-example-image.sh):
//!
//! ```text
//! docker swarm init --advertise-addr 127.0.0.1
//! docker node update --label-add base.workload=cpu $(docker node ls -q)
//! scripts/build-example-image.sh
//! cargo test -p base-sdk --test swarm -- --include-ignored
//! ```
//!
//! The tests run one at a time (a shared lock), because they share the two
//! overlay networks, which a test removes again only if it created them.
//! Every test removes the services, secrets and volumes it created, also
//! when it fails (a drop guard).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use base_sdk::model::{ImageRef, Slug};
use base_sdk::orchestrator::swarm::{CHALLENGES_NETWORK, JOBS_INTERNAL_NETWORK, SwarmOrchestrator};
use base_sdk::orchestrator::{
    ChallengeSecrets, ChallengeSpec, JobLimits, JobMount, JobNetwork, JobSpec, JobState,
    LogStreamKind, Orchestrator, OrchestratorError, ServiceState,
};
use bollard::Docker;
use bollard::models::{
    NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicatedJob, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets,
    TaskSpecPlacement, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};
use secrecy::SecretString;
use tokio::sync::Mutex;

const IMAGE: &str = "base.local/quiz-challenge:0.1.0";
const IMAGE_NEXT: &str = "base.local/quiz-challenge:0.1.1";
const CHALLENGE_TOKEN: &str = "swarm-test-challenge-token-Zq9xW2vB7nK4mP1r";
const BROKER_TOKEN: &str = "swarm-test-broker-token-Hd3sL8yT6cF0jQ5u";

/// One test at a time: they share the overlays.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn slug(s: &str) -> Slug {
    Slug::parse(s).unwrap()
}

fn docker_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Names of the mount configs of a job.
fn job_configs(id: &str) -> Vec<String> {
    let (_, out, _) = docker_cli(&[
        "config",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        "label=base.component=job-mount",
        "--filter",
        &format!("label=base.job.id={id}"),
    ]);
    let mut v: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    v.sort();
    v
}

fn exists(kind: &str, name: &str) -> bool {
    docker_cli(&[kind, "inspect", name]).0
}

fn challenge(slug_: &str, image: &str, token: &str) -> ChallengeSpec {
    ChallengeSpec {
        slug: slug(slug_),
        image: ImageRef::parse(image).unwrap(),
        version: "0.1.0".into(),
        env: BTreeMap::from([("QUIZ_TASKS".into(), "3".into())]),
        resources: BTreeMap::from([("memory".into(), "256m".into())]),
        secrets: ChallengeSecrets {
            challenge_token: SecretString::from(token.to_string()),
            broker_token: SecretString::from(BROKER_TOKEN.to_string()),
        },
        broker_url: Some("http://base-broker:18082".into()),
    }
}

/// Removes what a test made, in order, even when the test panics: job and
/// challenge services, then secrets and volumes labelled with its slugs,
/// then the overlays if this test created them.
struct Cleanup {
    slugs: Vec<String>,
    services: Vec<String>,
    /// Job ids whose mount configs are removed (after the services).
    job_configs: Vec<String>,
    networks_created: Vec<String>,
}

impl Cleanup {
    fn new() -> Self {
        // Only networks absent now are this test's to remove.
        let networks_created = [CHALLENGES_NETWORK, JOBS_INTERNAL_NETWORK]
            .into_iter()
            .filter(|n| !exists("network", n))
            .map(str::to_string)
            .collect();
        Self {
            slugs: Vec::new(),
            services: Vec::new(),
            job_configs: Vec::new(),
            networks_created,
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for s in &self.services {
            let _ = docker_cli(&["service", "rm", s]);
        }
        for s in &self.slugs {
            let _ = docker_cli(&["service", "rm", &format!("challenge-{s}")]);
        }
        for id in &self.job_configs {
            for name in job_configs(id) {
                let _ = docker_cli(&["config", "rm", &name]);
            }
        }
        for s in &self.slugs {
            let (_, ids, _) = docker_cli(&[
                "secret",
                "ls",
                "-q",
                "--filter",
                &format!("label=base.challenge={s}"),
            ]);
            for id in ids.split_whitespace() {
                let _ = docker_cli(&["secret", "rm", id]);
            }
        }
        // Containers take a moment to stop; volumes and networks are
        // released after.
        let deadline = Instant::now() + Duration::from_secs(60);
        for s in &self.slugs {
            let v = format!("base_{s}_data");
            while exists("volume", &v)
                && !docker_cli(&["volume", "rm", &v]).0
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        // Swarm removes networks asynchronously: `network rm` succeeds and
        // the network lingers for a moment, so wait until it is gone (the
        // next test must not adopt a network about to vanish).
        for n in &self.networks_created {
            while exists("network", n) && Instant::now() < deadline {
                let _ = docker_cli(&["network", "rm", n]);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

async fn wait_for_state(o: &SwarmOrchestrator, s: &Slug, want: ServiceState, image: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = o.challenge_status(s).await.unwrap();
        if status.state == want && image.is_none_or(|i| status.image.as_deref() == Some(i)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "service never reached {want:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn service_id(name: &str) -> String {
    let (ok, out, err) = docker_cli(&["service", "inspect", "--format", "{{.ID}}", name]);
    assert!(ok, "{err}");
    out.trim().to_string()
}

/// Secret names attached to a service.
fn service_secrets(name: &str) -> Vec<String> {
    let (ok, out, err) = docker_cli(&[
        "service",
        "inspect",
        "--format",
        "{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}",
        name,
    ]);
    assert!(ok, "{err}");
    let mut v: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    v.sort();
    v
}

fn secrets_of(slug_: &str) -> Vec<String> {
    let (_, out, _) = docker_cli(&[
        "secret",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &format!("label=base.challenge={slug_}"),
    ]);
    let mut v: Vec<String> = out.split_whitespace().map(str::to_string).collect();
    v.sort();
    v
}

fn assert_no_token_in_inspect(name: &str, tokens: &[&str]) {
    let (ok, out, err) = docker_cli(&["service", "inspect", name]);
    assert!(ok, "{err}");
    for t in tokens {
        assert!(
            !out.contains(t),
            "a token value appears in `docker service inspect {name}`"
        );
    }
    assert!(out.contains("CHALLENGE_SHARED_TOKEN_FILE=/run/secrets/base/challenge_token"));
    assert!(!out.contains("BASE_DATABASE_URL"));
    // Nor in any secret's inspect output (the engine never returns Data).
    let (_, ids, _) = docker_cli(&["secret", "ls", "-q"]);
    for id in ids.split_whitespace() {
        let (_, s, _) = docker_cli(&["secret", "inspect", id]);
        for t in tokens {
            assert!(!s.contains(t));
        }
    }
    // Nor in the arguments of any process on this host.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    for t in tokens {
        assert!(
            !ps.contains(t),
            "a token value appears in a process's arguments"
        );
    }
}

/// A job service made directly through the API (not through BASE's job
/// mapping) because it needs what jobs never get: the challenge's token
/// secret and the challenges network. It runs the quiz image's `probe`
/// mode against the challenge's overlay address; labelled like a BASE job
/// so the orchestrator's `wait_job` and `job_logs` can observe it.
async fn run_probe(
    o: &SwarmOrchestrator,
    s: &Slug,
    id: &str,
) -> (JobState, Option<i64>, String, String) {
    let docker = Docker::connect_with_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let name = format!("base-job-{id}");
    let token_secret = service_secrets(&format!("challenge-{s}"))
        .into_iter()
        .find(|n| n.contains("_challenge_token_"))
        .unwrap();
    let (_, secret_id, _) =
        docker_cli(&["secret", "inspect", "--format", "{{.ID}}", &token_secret]);
    let labels = HashMap::from([
        ("base.component".to_string(), "job".to_string()),
        ("base.challenge".to_string(), s.to_string()),
        ("base.job.id".to_string(), id.to_string()),
    ]);
    let spec = ServiceSpec {
        name: Some(name.clone()),
        labels: Some(labels),
        mode: Some(ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob {
                max_concurrent: Some(1),
                total_completions: Some(1),
            }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(IMAGE.into()),
                args: Some(vec![
                    "probe".into(),
                    format!("http://challenge-{s}:8000"),
                    s.to_string(),
                    "0.1.0".into(),
                    "/run/secrets/base/challenge_token".into(),
                ]),
                read_only: Some(true),
                secrets: Some(vec![TaskSpecContainerSpecSecrets {
                    file: Some(TaskSpecContainerSpecFile {
                        name: Some("/run/secrets/base/challenge_token".into()),
                        uid: Some("0".into()),
                        gid: Some("0".into()),
                        mode: Some(0o444),
                    }),
                    secret_id: Some(secret_id.trim().to_string()),
                    secret_name: Some(token_secret),
                }]),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(vec!["node.role==manager".into()]),
                ..Default::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(CHALLENGES_NETWORK.into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    docker.create_service(spec, None).await.unwrap();
    let status = o.wait_job(id, Duration::from_secs(120)).await.unwrap();
    let logs = o.job_logs(id, 64_000).await.unwrap();
    o.remove_job(id).await.unwrap();
    (status.state, status.exit_code, logs.stdout, logs.stderr)
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn a_challenge_runs_and_answers_get_weights_over_the_overlay() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    let s = "swt-weights";
    cleanup.slugs.push(s.into());
    cleanup.services.push("base-job-swt-probe".into());
    let o = SwarmOrchestrator::connect().await.unwrap();
    let created = o.ensure_networks().await.unwrap();
    assert_eq!(
        created.len(),
        cleanup.networks_created.len(),
        "created exactly the missing networks"
    );
    // Idempotent.
    assert!(o.ensure_networks().await.unwrap().is_empty());
    for (net, internal, attachable) in [
        (CHALLENGES_NETWORK, "false", "true"),
        (JOBS_INTERNAL_NETWORK, "true", "false"),
    ] {
        let (_, out, _) = docker_cli(&[
            "network",
            "inspect",
            "--format",
            "{{.Driver}} {{.Scope}} {{.Internal}} {{.Attachable}} {{index .Options \"encrypted\"}}|{{index .Options \"com.docker.network.driver.mtu\"}}",
            net,
        ]);
        assert_eq!(
            out.trim(),
            format!("overlay swarm {internal} {attachable} |1450"),
            "{net}"
        );
    }

    let spec = challenge(s, IMAGE, CHALLENGE_TOKEN);
    let status = o.ensure_challenge(&spec).await.unwrap();
    assert_eq!(
        status.endpoint.as_deref(),
        Some("http://challenge-swt-weights:8000")
    );
    wait_for_state(&o, &spec.slug, ServiceState::Running, Some(IMAGE)).await;

    let name = "challenge-swt-weights";
    let (_, inspect, _) = docker_cli(&["service", "inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let svc = &v[0]["Spec"];
    assert_eq!(svc["Labels"]["base.component"], "challenge");
    assert_eq!(svc["Labels"]["base.challenge"], s);
    let c = &svc["TaskTemplate"]["ContainerSpec"];
    assert_eq!(c["ReadOnly"], true);
    assert_eq!(c["Image"], IMAGE);
    let env: Vec<String> = serde_json::from_value(c["Env"].clone()).unwrap();
    for e in [
        "CHALLENGE_SLUG=swt-weights",
        "CHALLENGE_DATABASE_URL=sqlite+aiosqlite:////data/challenge.sqlite3",
        "CHALLENGE_SHARED_TOKEN_FILE=/run/secrets/base/challenge_token",
        "CHALLENGE_DOCKER_BROKER_URL=http://base-broker:18082",
        "CHALLENGE_DOCKER_BROKER_TOKEN_FILE=/run/secrets/base/docker_broker_token",
        "CHALLENGE_VERSION=0.1.0",
    ] {
        assert!(env.contains(&e.to_string()), "{e} missing from {env:?}");
    }
    assert_eq!(
        svc["TaskTemplate"]["Placement"]["Constraints"][0],
        "node.role==manager"
    );
    assert_eq!(c["Mounts"][0]["Source"], "base_swt-weights_data");
    assert_eq!(c["Mounts"][0]["Target"], "/data");
    let (_, vol, _) = docker_cli(&[
        "volume",
        "inspect",
        "--format",
        "{{index .Labels \"base.challenge.slug\"}}",
        "base_swt-weights_data",
    ]);
    assert_eq!(vol.trim(), s);
    let hash =
        |t: &str| base_sdk::orchestrator::swarm::token_hash8(&SecretString::from(t.to_string()));
    assert_eq!(
        service_secrets(name),
        vec![
            format!("base_swt-weights_broker_token_{}", hash(BROKER_TOKEN)),
            format!("base_swt-weights_challenge_token_{}", hash(CHALLENGE_TOKEN)),
        ]
    );
    assert_no_token_in_inspect(name, &[CHALLENGE_TOKEN, BROKER_TOKEN]);

    // What the kernel applied to the running container: no capabilities
    // at all; no_new_privs only where the engine supports setting it for
    // services (API >= 1.46 field; this project's CI engine is 1.41 and
    // drops it — recorded, not asserted, see docs/swarm.md).
    let (_, container, _) = docker_cli(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={name}"),
    ]);
    let (_, pid, _) = docker_cli(&["inspect", "--format", "{{.State.Pid}}", container.trim()]);
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let field = |k: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap()
    };
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapBnd:"), "0000000000000000");
    eprintln!(
        "engine API {}: challenge NoNewPrivs = {}",
        o.api_version(),
        field("NoNewPrivs:")
    );

    // Over the overlay: readiness, then get_weights with the mounted token.
    let (state, code, stdout, stderr) = run_probe(&o, &spec.slug, "swt-probe").await;
    assert_eq!(
        (state, code),
        (JobState::Succeeded, Some(0)),
        "probe failed:\n{stdout}\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["readiness"]["state"], "ready", "{report}");
    assert!(report["weights"].is_object(), "{report}");

    o.remove_challenge(&spec.slug, true).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn a_restarted_master_adopts_and_rolls_images_and_tokens() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    let s = "swt-rolling";
    cleanup.slugs.push(s.into());
    let (ok, _, err) = docker_cli(&["tag", IMAGE, IMAGE_NEXT]);
    assert!(ok, "{err}");
    let name = "challenge-swt-rolling";

    let first = SwarmOrchestrator::connect().await.unwrap();
    let spec = challenge(s, IMAGE, CHALLENGE_TOKEN);
    first.ensure_challenge(&spec).await.unwrap();
    let id = service_id(name);
    let (_, version, _) =
        docker_cli(&["service", "inspect", "--format", "{{.Version.Index}}", name]);
    drop(first);

    // A "restarted master": a new instance, the same desired state.
    let second = SwarmOrchestrator::connect().await.unwrap();
    second.ensure_challenge(&spec).await.unwrap();
    assert_eq!(service_id(name), id, "adopted, not duplicated");
    let (_, again, _) = docker_cli(&["service", "inspect", "--format", "{{.Version.Index}}", name]);
    assert_eq!(again, version, "an unchanged spec is not updated");
    let (_, ls, _) = docker_cli(&[
        "service",
        "ls",
        "--filter",
        "label=base.challenge=swt-rolling",
        "-q",
    ]);
    assert_eq!(ls.split_whitespace().count(), 1);
    let listed = second.list_challenges().await.unwrap();
    assert_eq!(listed.iter().filter(|c| c.slug.as_str() == s).count(), 1);
    wait_for_state(&second, &spec.slug, ServiceState::Running, Some(IMAGE)).await;

    // A new image rolls the same service.
    let next = challenge(s, IMAGE_NEXT, CHALLENGE_TOKEN);
    second.ensure_challenge(&next).await.unwrap();
    assert_eq!(service_id(name), id);
    let (_, image, _) = docker_cli(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
        name,
    ]);
    assert_eq!(image.trim(), IMAGE_NEXT);
    wait_for_state(&second, &spec.slug, ServiceState::Running, Some(IMAGE_NEXT)).await;

    // A rotated token: a new secret, the service switched, the old removed.
    let old_secrets = secrets_of(s);
    assert_eq!(old_secrets.len(), 2, "{old_secrets:?}");
    let rotated_token = "swarm-test-rotated-token-Pw4kV9sA2mE7xN3b";
    let rotated = challenge(s, IMAGE_NEXT, rotated_token);
    second.ensure_challenge(&rotated).await.unwrap();
    let now = service_secrets(name);
    let hash =
        base_sdk::orchestrator::swarm::token_hash8(&SecretString::from(rotated_token.to_string()));
    assert!(
        now.contains(&format!("base_swt-rolling_challenge_token_{hash}")),
        "{now:?}"
    );
    assert_eq!(secrets_of(s), now, "the replaced secret is removed");
    assert_no_token_in_inspect(name, &[CHALLENGE_TOKEN, BROKER_TOKEN, rotated_token]);
    wait_for_state(&second, &spec.slug, ServiceState::Running, Some(IMAGE_NEXT)).await;

    second.remove_challenge(&spec.slug, true).await.unwrap();
    let _ = docker_cli(&["rmi", IMAGE_NEXT]);
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn removal_keeps_the_volume_unless_purged() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    let s = "swt-remove";
    cleanup.slugs.push(s.into());
    let o = SwarmOrchestrator::connect().await.unwrap();
    let spec = challenge(s, IMAGE, CHALLENGE_TOKEN);
    o.ensure_challenge(&spec).await.unwrap();
    wait_for_state(&o, &spec.slug, ServiceState::Running, None).await;

    o.remove_challenge(&spec.slug, false).await.unwrap();
    assert_eq!(
        o.challenge_status(&spec.slug).await.unwrap().state,
        ServiceState::Missing
    );
    assert!(!exists("service", "challenge-swt-remove"));
    assert!(exists("volume", "base_swt-remove_data"), "data retained");
    assert!(secrets_of(s).is_empty(), "no secret outlives its service");
    assert!(
        !o.list_challenges()
            .await
            .unwrap()
            .iter()
            .any(|c| c.slug.as_str() == s)
    );

    // Idempotent, then purged.
    o.remove_challenge(&spec.slug, false).await.unwrap();
    o.remove_challenge(&spec.slug, true).await.unwrap();
    assert!(!exists("volume", "base_swt-remove_data"), "purged");
}

fn job(id: &str, command: &[&str], gpus: Option<u32>) -> JobSpec {
    JobSpec {
        id: id.into(),
        slug: slug("swt-jobs"),
        job_id: format!("caller-{id}"),
        task_id: Some("t-1".into()),
        image: ImageRef::parse(IMAGE).unwrap(),
        command: command.iter().map(|c| c.to_string()).collect(),
        workdir: None,
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
        limits: JobLimits {
            cpus: 0.5,
            memory_bytes: 256 << 20,
            pids: 128,
            gpus,
            network: JobNetwork::None,
            read_only: true,
            user: Some("65534:65534".into()),
            tmpfs: vec!["/tmp:rw,noexec,nosuid,size=16m".into()],
            ulimits: vec!["nofile=1024:1024".into()],
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["no-new-privileges".into()],
            init: true,
        },
        mounts: vec![],
        timeout_seconds: 60,
        deadline_at: chrono::Utc::now() + chrono::Duration::minutes(10),
    }
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn cpu_jobs_run_to_completion_with_exit_code_and_logs() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    cleanup.services.extend([
        "base-job-swt-fail".to_string(),
        "base-job-swt-ok".to_string(),
    ]);
    let o = SwarmOrchestrator::connect().await.unwrap();

    let failing = job("swt-fail", &["exit", "7"], None);
    let started = o.run_job(&failing).await.unwrap();
    assert!(!started.state.is_terminal());
    let ok = job("swt-ok", &["exit", "0"], None);
    o.run_job(&ok).await.unwrap();
    // Idempotent.
    o.run_job(&ok).await.unwrap();

    let done = o
        .wait_job("swt-fail", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        (done.state, done.exit_code),
        (JobState::Failed, Some(7)),
        "{done:?}"
    );
    assert!(done.finished_at.is_some());
    assert_eq!(done.slug.as_str(), "swt-jobs");
    assert!(done.deadline_at.is_some());
    let logs = o.job_logs("swt-fail", 64_000).await.unwrap();
    assert!(
        logs.stdout.contains("exit mode: stdout, code 7"),
        "{logs:?}"
    );
    assert!(
        logs.stderr.contains("exit mode: stderr, code 7"),
        "{logs:?}"
    );
    assert!(
        !logs.stdout.contains("stderr"),
        "streams are separate: {logs:?}"
    );
    assert!(!logs.truncated);
    let tail = o.job_logs("swt-fail", 8).await.unwrap();
    assert!(tail.truncated && tail.stdout.len() <= 8, "{tail:?}");

    let done = o
        .wait_job("swt-ok", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        (done.state, done.exit_code),
        (JobState::Succeeded, Some(0)),
        "{done:?}"
    );

    let listed = o.list_jobs(Some(slug("swt-jobs"))).await.unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["swt-fail", "swt-ok"]
    );
    assert!(
        o.list_jobs(Some(slug("swt-nothing")))
            .await
            .unwrap()
            .is_empty()
    );

    // The hardening the engine kept (see docs/swarm.md for what it drops).
    let (_, inspect, _) = docker_cli(&["service", "inspect", "base-job-swt-fail"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let t = &v[0]["Spec"]["TaskTemplate"];
    assert_eq!(t["RestartPolicy"]["Condition"], "none");
    assert_eq!(
        t["Placement"]["Constraints"][0],
        "node.labels.base.workload==cpu"
    );
    assert_eq!(t["Resources"]["Limits"]["Pids"], 128);
    assert_eq!(t["Resources"]["Limits"]["NanoCPUs"], 500_000_000);
    assert_eq!(t["ContainerSpec"]["CapabilityDrop"][0], "ALL");
    assert_eq!(t["ContainerSpec"]["Init"], true);
    assert_eq!(t["ContainerSpec"]["ReadOnly"], true);
    assert_eq!(t["ContainerSpec"]["Ulimits"][0]["Name"], "nofile");
    assert_eq!(
        t["Networks"][0]["Target"].as_str().map(|s| !s.is_empty()),
        Some(true)
    );
    assert_eq!(v[0]["Spec"]["Labels"]["base.job"], "caller-swt-fail");
    eprintln!(
        "engine kept Privileges: {} / tmpfs options: {}",
        t["ContainerSpec"]["Privileges"], t["ContainerSpec"]["Mounts"][0]["TmpfsOptions"]
    );

    for id in ["swt-fail", "swt-ok"] {
        o.remove_job(id).await.unwrap();
        o.remove_job(id).await.unwrap();
        assert!(matches!(
            o.job_status(id).await,
            Err(OrchestratorError::NotFound(_))
        ));
    }
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn a_gpu_job_on_a_gpu_less_node_is_reported_unscheduled() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    cleanup.services.push("base-job-swt-gpu".into());
    let o = SwarmOrchestrator::connect().await.unwrap();
    o.run_job(&job("swt-gpu", &["exit", "0"], Some(1)))
        .await
        .unwrap();
    let started = Instant::now();
    let status = o
        .wait_job("swt-gpu", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "wait_job is bounded"
    );
    assert_eq!(status.state, JobState::Queued, "{status:?}");
    let message = status.message.unwrap_or_default();
    assert!(message.contains("no suitable node"), "{message}");
    let (_, inspect, _) = docker_cli(&["service", "inspect", "base-job-swt-gpu"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let t = &v[0]["Spec"]["TaskTemplate"];
    assert_eq!(
        t["Placement"]["Constraints"][0],
        "node.labels.base.workload==gpu"
    );
    assert_eq!(
        t["Resources"]["Reservations"]["GenericResources"][0]["DiscreteResourceSpec"],
        serde_json::json!({"Kind": "NVIDIA-GPU", "Value": 1})
    );
    o.remove_job("swt-gpu").await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn gpu_capacity_is_read_from_the_nodes() {
    let _serial = SERIAL.lock().await;
    let o = SwarmOrchestrator::connect().await.unwrap();
    // This node is labelled `base.workload=cpu` and advertises no generic
    // resources (checked, so the assertion below means something).
    let (ok, out, err) = docker_cli(&[
        "node",
        "inspect",
        "self",
        "--format",
        "{{index .Spec.Labels \"base.workload\"}} {{json .Description.Resources.GenericResources}}",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "cpu null", "this test expects a CPU-only node");
    assert_eq!(o.gpu_capacity().await.unwrap(), 0);
}

/// Everything a follow stream yields until it ends by itself (a minute at
/// most, else the test fails: the stream must not hang), split by stream.
async fn follow_to_end(o: &SwarmOrchestrator, id: &str) -> (String, String) {
    use futures::StreamExt;
    let mut stream = o.follow_job_logs(id).await.unwrap();
    let collect = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            match chunk.stream {
                LogStreamKind::Stdout => out.extend_from_slice(&chunk.data),
                LogStreamKind::Stderr => err.extend_from_slice(&chunk.data),
            }
        }
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("the follow stream did not end by itself")
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn following_a_job_keeps_streams_apart_and_ends_by_itself() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    cleanup.services.extend([
        "base-job-swt-follow-exit".to_string(),
        "base-job-swt-follow-sleep".to_string(),
    ]);
    let o = SwarmOrchestrator::connect().await.unwrap();
    assert!(matches!(
        o.follow_job_logs("swt-follow-nothing").await,
        Err(OrchestratorError::NotFound(_))
    ));

    // Followed from creation, while it runs: both lines, then the end.
    o.run_job(&job("swt-follow-sleep", &["sleep", "3"], None))
        .await
        .unwrap();
    let (stdout, stderr) = follow_to_end(&o, "swt-follow-sleep").await;
    assert!(stdout.contains("sleep mode: sleeping 3 s"), "{stdout}");
    assert!(stdout.contains("sleep mode: done"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
    let status = o.job_status("swt-follow-sleep").await.unwrap();
    assert_eq!(status.state, JobState::Succeeded, "{status:?}");

    // Both streams, each on its own side; followed after the job ended too.
    o.run_job(&job("swt-follow-exit", &["exit", "3"], None))
        .await
        .unwrap();
    let (stdout, stderr) = follow_to_end(&o, "swt-follow-exit").await;
    assert!(stdout.contains("exit mode: stdout, code 3"), "{stdout}");
    assert!(stderr.contains("exit mode: stderr, code 3"), "{stderr}");
    assert!(!stdout.contains("stderr"), "{stdout}");
    assert!(!stderr.contains("stdout"), "{stderr}");
    let done = o
        .wait_job("swt-follow-exit", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((done.state, done.exit_code), (JobState::Failed, Some(3)));
    let (again, _) = follow_to_end(&o, "swt-follow-exit").await;
    assert_eq!(again, stdout, "a finished job's output, once");

    // A follower of a job that is removed meanwhile ends too.
    o.run_job(&job("swt-follow-sleep-2", &["sleep", "300"], None))
        .await
        .unwrap();
    cleanup.services.push("base-job-swt-follow-sleep-2".into());
    let follower = {
        let o = SwarmOrchestrator::connect().await.unwrap();
        tokio::spawn(async move { follow_to_end(&o, "swt-follow-sleep-2").await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    o.remove_job("swt-follow-sleep-2").await.unwrap();
    follower.await.unwrap();

    for id in ["swt-follow-exit", "swt-follow-sleep"] {
        o.remove_job(id).await.unwrap();
    }
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn a_job_reads_its_mounted_files_and_leaves_no_config_behind() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    cleanup.services.push("base-job-swt-mount".into());
    cleanup
        .job_configs
        .extend(["swt-mount".to_string(), "swt-mount-rw".to_string()]);
    let o = SwarmOrchestrator::connect().await.unwrap();

    let big = "x".repeat(400_000);
    let mut j = job(
        "swt-mount",
        &[
            "cat",
            "/work/in/a.txt",
            "/work/in/deep/er/b.txt",
            "/work/in/empty",
            "/work/in/big",
            "/etc/task.json",
        ],
        None,
    );
    j.mounts = vec![
        JobMount {
            target: "/work/in".into(),
            read_only: true,
            files: BTreeMap::from([
                ("a.txt".to_string(), b"alpha\n".to_vec()),
                ("deep/er/b.txt".to_string(), b"beta\n".to_vec()),
                ("empty".to_string(), Vec::new()),
                ("big".to_string(), big.clone().into_bytes()),
            ]),
        },
        // A single-file mount: the name "" is the target itself.
        JobMount {
            target: "/etc/task.json".into(),
            read_only: true,
            files: BTreeMap::from([(String::new(), b"{\"task\":7}\n".to_vec())]),
        },
    ];
    o.run_job(&j).await.unwrap();
    assert_eq!(
        job_configs("swt-mount"),
        (0..5)
            .map(|n| format!("base-job-swt-mount-{n}"))
            .collect::<Vec<_>>()
    );
    let (_, labels, _) = docker_cli(&[
        "config",
        "inspect",
        "--format",
        "{{json .Spec.Labels}}",
        "base-job-swt-mount-0",
    ]);
    let labels: serde_json::Value = serde_json::from_str(labels.trim()).unwrap();
    assert_eq!(
        labels,
        serde_json::json!({"base.component": "job-mount", "base.job.id": "swt-mount", "base.challenge": "swt-jobs", "base.deployment": "base"})
    );
    let done = o
        .wait_job("swt-mount", Duration::from_secs(120))
        .await
        .unwrap();
    let logs = o.job_logs("swt-mount", 1 << 20).await.unwrap();
    assert_eq!(
        (done.state, done.exit_code),
        (JobState::Succeeded, Some(0)),
        "{done:?} {}",
        logs.stderr
    );
    assert_eq!(
        logs.stdout,
        format!("alpha\nbeta\n{big}{{\"task\":7}}\n"),
        "every file, byte for byte (the empty one empty)"
    );
    // Nothing to prune while the job exists.
    assert!(
        !o.orphaned_job_mounts()
            .await
            .unwrap()
            .iter()
            .any(|n| n.starts_with("base-job-swt-mount-"))
    );

    o.remove_job("swt-mount").await.unwrap();
    assert!(
        job_configs("swt-mount").is_empty(),
        "configs removed with the job"
    );
    o.remove_job("swt-mount").await.unwrap();

    // Refused before anything exists: a file over Docker's config limit
    // (writable mounts: see the shim test below).
    let mut rw = job("swt-mount-rw", &["cat", "/out/x"], None);
    rw.mounts = vec![JobMount {
        target: "/out".into(),
        read_only: true,
        files: BTreeMap::from([("x".to_string(), b"x".to_vec())]),
    }];
    rw.mounts[0].files.insert("huge".into(), vec![0u8; 512_000]);
    let e = o.run_job(&rw).await.unwrap_err();
    assert!(
        matches!(&e, OrchestratorError::InvalidSpec(m) if m.contains("/out/huge")),
        "{e}"
    );
    assert!(!exists("service", "base-job-swt-mount-rw"));
    assert!(job_configs("swt-mount-rw").is_empty());
}

/// Running containers of a service (on this node).
fn running_containers(service: &str) -> Vec<String> {
    let (_, out, _) = docker_cli(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={service}"),
    ]);
    out.split_whitespace().map(str::to_string).collect()
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn removing_a_running_job_stops_its_task_and_leaves_no_config() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    let service = "base-job-swt-remove-running";
    cleanup.services.push(service.into());
    cleanup.job_configs.push("swt-remove-running".into());
    let o = SwarmOrchestrator::connect().await.unwrap();
    let mut j = job("swt-remove-running", &["sleep", "300"], None);
    j.mounts = vec![JobMount {
        target: "/work/in".into(),
        read_only: true,
        files: BTreeMap::from([("a.txt".to_string(), b"alpha".to_vec())]),
    }];
    o.run_job(&j).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while o.job_status("swt-remove-running").await.unwrap().state != JobState::Running {
        assert!(Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    while running_containers(service).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no container for the running job"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(job_configs("swt-remove-running").len(), 1);

    o.remove_job("swt-remove-running").await.unwrap();
    assert!(!exists("service", service));
    assert!(job_configs("swt-remove-running").is_empty());
    // The container stops (Docker 20.10 would leave it running after a
    // plain service delete); within the stop grace period at worst.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running_containers(service).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the removed job's container still runs: {:?}",
            running_containers(service)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Idempotent.
    o.remove_job("swt-remove-running").await.unwrap();
    assert!(matches!(
        o.job_status("swt-remove-running").await,
        Err(OrchestratorError::NotFound(_))
    ));
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn orphaned_mount_configs_are_pruned_and_nothing_else() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    cleanup.services.push("base-job-swt-prune-live".into());
    cleanup
        .job_configs
        .extend(["swt-prune-live".to_string(), "swt-prune-gone".to_string()]);
    let o = SwarmOrchestrator::connect().await.unwrap();

    // A live job with a mounted file.
    let mut live = job("swt-prune-live", &["sleep", "300"], None);
    live.mounts = vec![JobMount {
        target: "/work/in".into(),
        read_only: true,
        files: BTreeMap::from([("a".to_string(), b"a".to_vec())]),
    }];
    o.run_job(&live).await.unwrap();
    // What a broker killed between configs and service leaves: a job-mount
    // config of a job with no service; and a config that is not BASE's.
    let data = std::env::temp_dir().join("swt-prune-config");
    std::fs::write(&data, b"x").unwrap();
    let data = data.to_str().unwrap();
    for (name, component, job_id) in [
        ("base-job-swt-prune-gone-0", "job-mount", "swt-prune-gone"),
        ("swt-prune-foreign", "other", "swt-prune-gone"),
    ] {
        let (ok, _, err) = docker_cli(&[
            "config",
            "create",
            "--label",
            &format!("base.component={component}"),
            "--label",
            &format!("base.job.id={job_id}"),
            name,
            data,
        ]);
        assert!(ok, "{err}");
    }

    // Young: the default grace keeps it (its job may be being created).
    assert!(
        !o.orphaned_job_mounts()
            .await
            .unwrap()
            .contains(&"base-job-swt-prune-gone-0".to_string())
    );
    let pruned = o.prune_job_mounts_older_than(Duration::ZERO).await.unwrap();
    assert!(pruned >= 1, "{pruned}");
    assert!(
        job_configs("swt-prune-gone").is_empty(),
        "the orphan is gone"
    );
    assert_eq!(
        job_configs("swt-prune-live").len(),
        1,
        "a live job's file stays"
    );
    assert!(exists("config", "swt-prune-foreign"), "not BASE's: kept");
    let _ = docker_cli(&["config", "rm", "swt-prune-foreign"]);

    o.remove_job("swt-prune-live").await.unwrap();
    assert!(job_configs("swt-prune-live").is_empty());
}

/// The files of a gzip tar, directories left out.
fn untar(archive: &[u8]) -> BTreeMap<String, String> {
    use std::io::Read;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut files = BTreeMap::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_dir() {
            continue;
        }
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        files.insert(path, text);
    }
    files
}

/// The static shim scripts/test.sh builds (scripts/build-shim.sh) and
/// bind-mounts from this node, as workers do from their install path.
fn test_shim() -> String {
    std::env::var("BASE_TEST_JOB_SHIM").expect(
        "BASE_TEST_JOB_SHIM must name the static job shim (scripts/build-shim.sh; scripts/test.sh sets it)",
    )
}

#[tokio::test]
#[ignore = "needs docker swarm and the static job shim"]
async fn writable_mounts_are_seeded_run_under_the_shim_and_come_back() {
    let _serial = SERIAL.lock().await;
    let mut cleanup = Cleanup::new();
    cleanup.services.push("base-job-swt-write".into());
    cleanup.job_configs.push("swt-write".into());
    let o = SwarmOrchestrator::connect()
        .await
        .unwrap()
        .with_job_shim(Some(test_shim()));

    let mut spec = job(
        "swt-write",
        &["append", "/work/notes.txt", "appended"],
        None,
    );
    spec.mounts = vec![
        JobMount {
            target: "/work".into(),
            read_only: false,
            files: BTreeMap::from([
                ("notes.txt".into(), b"seed\n".to_vec()),
                ("sub/keep.txt".into(), b"kept\n".to_vec()),
            ]),
        },
        JobMount {
            target: "/in".into(),
            read_only: true,
            files: BTreeMap::from([("x".into(), b"read-only".to_vec())]),
        },
        JobMount {
            target: "/out".into(),
            read_only: false,
            files: BTreeMap::new(),
        },
    ];
    o.run_job(&spec).await.unwrap();
    let done = o
        .wait_job("swt-write", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        (done.state, done.exit_code),
        (JobState::Succeeded, Some(0)),
        "{done:?}"
    );
    // The job's own output, without the shim's lines.
    let logs = o.job_logs("swt-write", 64_000).await.unwrap();
    assert!(
        logs.stdout.contains("append mode: wrote /work/notes.txt"),
        "{logs:?}"
    );
    assert!(!logs.stdout.contains("BASE-OUT1"), "{logs:?}");

    let outputs = o.job_outputs("swt-write", 2).await.unwrap();
    assert_eq!(outputs.len(), 2);
    let work = untar(outputs[0].as_ref().unwrap());
    assert_eq!(
        work,
        BTreeMap::from([
            ("notes.txt".to_string(), "seed\nappended\n".to_string()),
            ("sub/keep.txt".to_string(), "kept\n".to_string()),
        ])
    );
    assert!(untar(outputs[1].as_ref().unwrap()).is_empty());

    // The shim is the entrypoint; the image's own entrypoint runs under it.
    let (_, inspect, _) = docker_cli(&["service", "inspect", "base-job-swt-write"]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let c = &v[0]["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(c["Command"], serde_json::json!(["/.base/shim"]));
    let args: Vec<String> = serde_json::from_value(c["Args"].clone()).unwrap();
    let dashdash = args.iter().position(|a| a == "--").unwrap();
    assert_eq!(
        args[dashdash + 1..],
        [
            "/usr/local/bin/quiz-challenge",
            "append",
            "/work/notes.txt",
            "appended"
        ]
    );
    o.remove_job("swt-write").await.unwrap();

    // A node without the shim at the configured path fails the job at
    // start, naming the path.
    cleanup.services.push("base-job-swt-noshim".into());
    cleanup.job_configs.push("swt-noshim".into());
    let missing = SwarmOrchestrator::connect()
        .await
        .unwrap()
        .with_job_shim(Some("/nonexistent/base/base-shim".into()));
    let mut lost = spec.clone();
    lost.id = "swt-noshim".into();
    missing.run_job(&lost).await.unwrap();
    let done = missing
        .wait_job("swt-noshim", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Failed, "{done:?}");
    assert!(
        done.message
            .as_deref()
            .is_some_and(|m| m.contains("/nonexistent/base/base-shim")),
        "{done:?}"
    );
    missing.remove_job("swt-noshim").await.unwrap();

    // Without a shim, writable mounts are refused before anything exists.
    let bare = SwarmOrchestrator::connect()
        .await
        .unwrap()
        .with_job_shim(None);
    let err = bare.run_job(&spec).await.unwrap_err().to_string();
    assert!(err.contains("BASE_SWARM_JOB_SHIM"), "{err}");
    assert!(matches!(
        bare.job_status("swt-write").await,
        Err(OrchestratorError::NotFound(_))
    ));
}

/// A broker over the real engine and a fresh SQLite store, with one
/// challenge (`swt-broker`) allowed to run `base.local/` images.
async fn engine_broker(
    config: base_sdk::broker::BrokerConfig,
) -> (
    base_sdk::broker::Broker,
    Slug,
    base_sdk::testing::TempSqlite,
) {
    use base_sdk::registry::{NewChallenge, Registry};
    let db = base_sdk::testing::sqlite().await.unwrap();
    Registry::new(db.store.clone(), base_sdk::config::Environment::Development)
        .create(
            NewChallenge {
                slug: "swt-broker".into(),
                name: "Swarm broker test".into(),
                image: IMAGE.into(),
                version: "0.1.0".into(),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    let orchestrator = SwarmOrchestrator::connect().await.unwrap();
    let broker = base_sdk::broker::Broker::new(
        db.store.clone(),
        std::sync::Arc::new(orchestrator),
        base_sdk::broker::BrokerConfig {
            allowed_images: vec!["base.local/".into()],
            ..config
        },
    );
    (broker, slug("swt-broker"), db)
}

/// Job services of the `swt-broker` challenge still on the engine.
fn broker_test_services() -> Vec<String> {
    let (_, out, _) = docker_cli(&[
        "service",
        "ls",
        "-q",
        "--filter",
        "label=base.challenge=swt-broker",
    ]);
    out.split_whitespace().map(str::to_string).collect()
}

/// Removes the `swt-broker` job services, also when the test panics.
struct BrokerJobsCleanup;

impl Drop for BrokerJobsCleanup {
    fn drop(&mut self) {
        for id in broker_test_services() {
            let _ = docker_cli(&["service", "rm", &id]);
        }
    }
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn a_job_whose_image_cannot_be_pulled_fails_with_125_never_success() {
    let _serial = SERIAL.lock().await;
    let _jobs = BrokerJobsCleanup;
    // Nothing can be pulled here (no registry), like a tag that does not
    // exist: the engine rejects the task with `ExitCode: 0` and no
    // container.
    let missing = "base.local/base-test-no-such-image:0.0.0";
    assert!(!exists("image", missing));

    // The orchestrator reports it as a job that never ran.
    let o = SwarmOrchestrator::connect().await.unwrap();
    let mut spec = job("swt-nopull", &["exit", "0"], None);
    spec.image = ImageRef::parse(missing).unwrap();
    // No network attachment: what is tested is the image, and the job
    // never gets as far as a network anyway.
    spec.limits.network = JobNetwork::Default;
    let mut cleanup = Cleanup::new();
    cleanup.services.push("base-job-swt-nopull".into());
    o.run_job(&spec).await.unwrap();
    let done = o
        .wait_job("swt-nopull", Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        (done.state, done.exit_code),
        (JobState::Failed, None),
        "{done:?}"
    );
    assert!(
        done.message
            .as_deref()
            .is_some_and(|m| m.contains("No such image")),
        "{done:?}"
    );
    o.remove_job("swt-nopull").await.unwrap();

    // Through the broker: return code 125 (as `docker run` when the
    // container cannot start), the engine's reason in stderr and error.
    let (broker, slug, db) = engine_broker(base_sdk::broker::BrokerConfig::default()).await;
    let req: base_sdk::broker::request::BrokerRunRequest =
        serde_json::from_value(serde_json::json!({
            "job_id": "nopull",
            "image": missing,
            "command": ["exit", "0"],
            "limits": {"network": "default", "memory": "256m", "pids_limit": 128},
            "timeout_seconds": 120,
        }))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(180), broker.run(&slug, &req))
        .await
        .expect("the run ends")
        .unwrap();
    assert_eq!(response.returncode, 125, "{response:?}");
    assert!(!response.timed_out);
    assert!(
        response
            .stderr
            .contains(&format!("No such image: {missing}")),
        "{response:?}"
    );
    let jobs = db
        .store
        .list_jobs(&base_sdk::model::JobFilter::default())
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].state, jobs[0].exit_code), (JobState::Failed, None));
    let error = jobs[0].error.clone().unwrap_or_default();
    assert!(
        error.starts_with("the job could not run: ") && error.contains("No such image"),
        "{error}"
    );
    assert!(
        broker_test_services().is_empty(),
        "the job service is removed"
    );
}

#[tokio::test]
#[ignore = "needs docker swarm"]
async fn a_job_no_node_can_take_ends_failed_after_the_schedule_wait() {
    let _serial = SERIAL.lock().await;
    let _cleanup = Cleanup::new();
    let _jobs = BrokerJobsCleanup;
    // A GPU job on a cluster whose only node is a CPU worker: its
    // constraint cannot be satisfied, and without a bound it would wait
    // for its deadline (timeout + start grace).
    let (broker, slug, db) = engine_broker(base_sdk::broker::BrokerConfig {
        gpu_capacity: Some(1),
        schedule_timeout: Duration::from_secs(3),
        ..base_sdk::broker::BrokerConfig::default()
    })
    .await;
    let req: base_sdk::broker::request::BrokerRunRequest =
        serde_json::from_value(serde_json::json!({
            "job_id": "nonode",
            "image": IMAGE,
            "command": ["exit", "0"],
            "limits": {"network": "default", "memory": "256m", "pids_limit": 128, "gpu_count": 1},
            "timeout_seconds": 600,
        }))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(120), broker.run(&slug, &req))
        .await
        .expect("a job no node takes ends after the schedule wait")
        .unwrap();
    assert_eq!(response.returncode, 125, "{response:?}");
    assert!(!response.timed_out);
    assert!(
        response
            .stderr
            .contains("the job could not run: no node took it within 3 s: no suitable node"),
        "{response:?}"
    );
    let jobs = db
        .store
        .list_jobs(&base_sdk::model::JobFilter::default())
        .await
        .unwrap();
    assert_eq!(jobs[0].state, JobState::Failed);
    assert!(
        db.store.gpu_leases().await.unwrap().is_empty(),
        "lease released"
    );
    assert!(
        broker_test_services().is_empty(),
        "the job service is removed"
    );
}
