//! Proves the "done when" of `base-server dev` against the real binary:
//! from an empty data dir it publishes a non-trivial vector in its first
//! epoch, a killed challenge is marked failed while the others carry the
//! next vector, SIGTERM leaves no child process and no token file behind,
//! and a restart on the same data dir reuses everything and serves the
//! stored vector at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long one test may take in all; every wait below polls against it.
const DEADLINE: Duration = Duration::from_secs(60);

/// Pause between two polls.
const POLL: Duration = Duration::from_millis(50);

/// Vars of the developer's or CI's environment that would point the server
/// elsewhere (every other `BASE_*` var is removed too).
const INTERFERING: &[&str] = &[
    "BASE_DATABASE_URL",
    "BASE_ADMIN_TOKEN",
    "BASE_LISTEN",
    "BASE_ENVIRONMENT",
    "BASE_METAGRAPH_FILE",
    "BASE_ORCHESTRATOR",
    "BASE_CONFIG",
];

/// Uids of the dev miners (see `MINERS` in `src/dev.rs`): 0 is the burn
/// hotkey, then Alice, Bob and Carol with decreasing skill.
const ALICE: u64 = 1;
const BOB: u64 = 2;
const CAROL: u64 = 3;

/// One `base-server dev` process over a data dir.
struct Dev {
    child: Child,
    pid: u32,
    base: String,
    /// The dev broker's URL, which its challenges must be given.
    broker: String,
    data_dir: PathBuf,
    log: PathBuf,
    deadline: Instant,
}

impl Dev {
    /// Starts `base-server dev` with its data in `<root>/data` and its
    /// output in `<root>/server-<n>.log`.
    fn start(root: &Path, run: u32, deadline: Instant) -> Self {
        let data_dir = root.join("data");
        let log = root.join(format!("server-{run}.log"));
        let port = free_port();
        let broker_port = free_port();
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_base-server"));
        cmd.args(["dev", "--listen", &format!("127.0.0.1:{port}")]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BASE_") {
                cmd.env_remove(key);
            }
        }
        for key in INTERFERING {
            cmd.env_remove(key);
        }
        cmd.env("BASE_DATA_DIR", &data_dir)
            .env("BASE_EPOCH_SECONDS", "2")
            .env("BASE_BROKER_LISTEN", format!("127.0.0.1:{broker_port}"))
            // No full reconcile pass during a test: a killed challenge
            // stays dead.
            .env("BASE_RECONCILE_SECONDS", "3600")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawning base-server dev");
        let pid = child.id().unwrap();
        Self {
            child,
            pid,
            base: format!("http://127.0.0.1:{port}"),
            broker: format!("http://127.0.0.1:{broker_port}"),
            data_dir,
            log,
            deadline,
        }
    }

    /// The server's output so far, for failure messages.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with `what` and the server's output.
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n--- base-server output ---\n{}", self.output())
    }

    /// Polls `probe` until it returns `Some`, failing at the deadline or if
    /// the server exits.
    async fn wait_for<T>(&mut self, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.fail(&format!(
                    "base-server exited ({status}) while waiting for {what}"
                ));
            }
            if Instant::now() >= self.deadline {
                self.fail(&format!("timed out waiting for {what}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until a snapshot is published and returns it.
    async fn first_snapshot(&mut self, client: &reqwest::Client) -> Value {
        let base = self.base.clone();
        let found = async || match latest(client, &base).await {
            Some((StatusCode::OK, body)) => Some(body),
            Some((StatusCode::SERVICE_UNAVAILABLE, _)) | None => None,
            Some((status, body)) => Some(Value::from(format!("unexpected {status}: {body}"))),
        };
        let snapshot = self.wait_for("the first published snapshot", found).await;
        if let Value::String(e) = &snapshot {
            self.fail(e);
        }
        snapshot
    }

    /// SIGTERM, then waits for a successful exit.
    async fn terminate(&mut self) {
        signal(self.pid, "TERM");
        let left = self.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.child.wait()).await {
            Ok(status) => {
                let status = status.unwrap();
                if !status.success() {
                    self.fail(&format!("base-server exited with {status} after SIGTERM"));
                }
            }
            Err(_) => self.fail("base-server did not exit after SIGTERM"),
        }
    }
}

impl Drop for Dev {
    /// Backstop for a failing test: kill the server (kill_on_drop) and the
    /// challenges it started, which a SIGKILLed server cannot stop.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid, "KILL");
        }
        for (pid, _) in challenge_processes(&self.data_dir) {
            signal(pid, "KILL");
        }
    }
}

/// `GET <base>/v1/weights/latest`: `None` while the port does not answer.
async fn latest(client: &reqwest::Client, base: &str) -> Option<(StatusCode, Value)> {
    let resp = client
        .get(format!("{base}/v1/weights/latest"))
        .send()
        .await
        .ok()?;
    let status = resp.status();
    Some((status, resp.json().await.unwrap()))
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Sends the signal `name` (`TERM`, `KILL`) to `pid` with kill(1): this
/// workspace forbids `unsafe`, so no `libc::kill`.
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success() || name == "KILL",
        "kill -{name} {pid} failed"
    );
}

/// The running `example-challenge` processes whose files are in
/// `data_dir` (so challenges of other tests or of a developer's own `dev`
/// are never touched), with their `CHALLENGE_SLUG`. Zombies have an empty
/// cmdline and do not count.
fn challenge_processes(data_dir: &Path) -> Vec<(u32, String)> {
    challenge_envs(data_dir)
        .into_iter()
        .filter_map(|(pid, env)| Some((pid, env.get("CHALLENGE_SLUG")?.clone())))
        .collect()
}

/// The environment of each challenge process of this `dev` (see
/// [`challenge_processes`]), by pid.
fn challenge_envs(data_dir: &Path) -> Vec<(u32, BTreeMap<String, String>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if !cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == b"example-challenge")
        {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let env: BTreeMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect();
        let ours = env
            .get("CHALLENGE_SHARED_TOKEN_FILE")
            .is_some_and(|f| Path::new(f).starts_with(data_dir));
        if ours {
            found.push((pid, env));
        }
    }
    found.sort();
    found
}

/// The dev metagraph: uid = position of the hotkey.
fn hotkeys(data_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(data_dir.join("metagraph.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["hotkeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect()
}

/// `source_challenges[slug]` of a snapshot.
fn source<'a>(snapshot: &'a Value, slug: &str) -> &'a Value {
    snapshot["source_challenges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slug"] == slug)
        .unwrap_or_else(|| panic!("no source challenge {slug} in {snapshot}"))
}

/// `emission_percent` (a decimal string or a number).
fn emission(source: &Value) -> f64 {
    match &source["emission_percent"] {
        Value::String(s) => s.parse().unwrap(),
        v => v.as_f64().unwrap(),
    }
}

fn computed_at(snapshot: &Value) -> DateTime<Utc> {
    snapshot["computed_at"].as_str().unwrap().parse().unwrap()
}

/// The snapshot's vector as uid → weight.
fn vector(snapshot: &Value) -> BTreeMap<u64, f64> {
    let uids: Vec<u64> = snapshot["uids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_u64().unwrap())
        .collect();
    let weights: Vec<f64> = snapshot["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .collect();
    assert_eq!(uids.len(), weights.len(), "{snapshot}");
    assert!(uids.is_sorted_by(|a, b| a < b), "uids ascend: {snapshot}");
    uids.into_iter().zip(weights).collect()
}

/// CONTRACTS.md §5 done by hand: each challenge's weights (positive,
/// finite) normalized, scaled by its share, mapped to uids (uid 0 and
/// unknown hotkeys dropped) and normalized over uids.
fn expected(parts: &[(f64, &Value)], hotkeys: &[String]) -> BTreeMap<u64, f64> {
    let mut by_uid = BTreeMap::new();
    for (share, weights) in parts {
        let kept: Vec<(&String, f64)> = weights
            .as_object()
            .unwrap()
            .iter()
            .map(|(h, w)| (h, w.as_f64().unwrap()))
            .filter(|(_, w)| w.is_finite() && *w > 0.0)
            .collect();
        let total: f64 = kept.iter().map(|(_, w)| w).sum();
        for (hotkey, w) in kept {
            let Some(uid) = hotkeys.iter().position(|h| h == hotkey) else {
                continue;
            };
            if uid != 0 {
                *by_uid.entry(uid as u64).or_insert(0.0) += share * w / total;
            }
        }
    }
    let total: f64 = by_uid.values().sum();
    by_uid.values_mut().for_each(|w| *w /= total);
    by_uid
}

fn assert_close(actual: &BTreeMap<u64, f64>, expected: &BTreeMap<u64, f64>, snapshot: &Value) {
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "uids of {snapshot}"
    );
    for (uid, w) in expected {
        assert!(
            (actual[uid] - w).abs() < 1e-9,
            "uid {uid}: {} instead of {w} in {snapshot}",
            actual[uid]
        );
    }
}

/// A valid, non-trivial vector: at least two uids, no burn uid, summing to 1.
fn assert_non_trivial(v: &BTreeMap<u64, f64>, snapshot: &Value) {
    assert!(v.len() >= 2, "non-trivial vector: {snapshot}");
    assert!(!v.contains_key(&0), "uid 0 is never weighted: {snapshot}");
    assert!(v.values().all(|w| w.is_finite() && *w > 0.0), "{snapshot}");
    let sum: f64 = v.values().sum();
    assert!((sum - 1.0).abs() < 1e-9, "weights sum to {sum}: {snapshot}");
}

/// A snapshot where both examples answered, checked in full.
fn assert_full_snapshot(snapshot: &Value, hotkeys: &[String]) {
    let quiz = source(snapshot, "quiz");
    let hard = source(snapshot, "quiz-hard");
    for s in [quiz, hard] {
        assert_eq!(s["ok"], true, "{snapshot}");
        assert!(s["error"].is_null(), "{snapshot}");
    }
    assert_eq!(emission(quiz), 60.0);
    assert_eq!(emission(hard), 40.0);
    let v = vector(snapshot);
    assert_non_trivial(&v, snapshot);
    assert!(
        v[&ALICE] > v[&BOB] && v[&BOB] > v[&CAROL],
        "the better miner weighs more: {snapshot}"
    );
    let want = expected(&[(0.6, &quiz["weights"]), (0.4, &hard["weights"])], hotkeys);
    assert_close(&v, &want, snapshot);
}

/// After SIGTERM: no challenge process left, data kept, no token file.
fn assert_clean_exit(data_dir: &Path) {
    let left = challenge_processes(data_dir);
    assert!(left.is_empty(), "challenge processes survived: {left:?}");
    let quiz_data = data_dir.join("challenges/quiz/data");
    assert!(
        quiz_data.join("challenge.sqlite3").is_file(),
        "data kept in {}",
        quiz_data.display()
    );
    for entry in std::fs::read_dir(data_dir.join("challenges")).unwrap() {
        let secrets = entry.unwrap().path().join("secrets");
        if secrets.exists() {
            let files: Vec<_> = std::fs::read_dir(&secrets).unwrap().collect();
            assert!(
                files.is_empty(),
                "token files left in {}",
                secrets.display()
            );
        }
    }
}

#[tokio::test]
async fn dev_publishes_weights_and_survives_a_stopped_challenge() {
    let root = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut dev = Dev::start(root.path(), 1, Instant::now() + DEADLINE);

    // Within one epoch: the first vector published is already the full one
    // (dev mode lets its miners answer before its first epoch).
    let first = dev.first_snapshot(&client).await;
    let hotkeys = hotkeys(&dev.data_dir);
    assert_full_snapshot(&first, &hotkeys);

    // Both challenges run as children of this server, over this data dir.
    let running = challenge_processes(&dev.data_dir);
    let mut slugs: Vec<&str> = running.iter().map(|(_, s)| s.as_str()).collect();
    slugs.sort_unstable();
    assert_eq!(slugs, ["quiz", "quiz-hard"], "{running:?}");
    // Each is told where dev's broker is (and where its token is), so a
    // challenge can run evaluation jobs.
    for (pid, env) in challenge_envs(&dev.data_dir) {
        assert_eq!(
            env.get("CHALLENGE_DOCKER_BROKER_URL"),
            Some(&dev.broker),
            "challenge process {pid}: {env:?}"
        );
        assert!(
            env.contains_key("CHALLENGE_DOCKER_BROKER_TOKEN_FILE"),
            "challenge process {pid}: {env:?}"
        );
    }
    let hard_pid = running.iter().find(|(_, s)| s == "quiz-hard").unwrap().0;

    // Stop quiz-hard the hard way. The snapshot seen last before the kill
    // bounds which ones can reflect it (an epoch in flight may not).
    let base = dev.base.clone();
    let before = latest(&client, &base).await.unwrap().1;
    signal(hard_pid, "KILL");
    let after = computed_at(&before);
    let failed = async || {
        let (_, s) = latest(&client, &base).await?;
        (computed_at(&s) > after && source(&s, "quiz-hard")["ok"] == false).then_some(s)
    };
    let snapshot = dev.wait_for("an epoch with quiz-hard failed", failed).await;

    let quiz = source(&snapshot, "quiz");
    let hard = source(&snapshot, "quiz-hard");
    assert_eq!(quiz["ok"], true, "{snapshot}");
    assert!(quiz["error"].is_null(), "{snapshot}");
    let error = hard["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "the failure is explained: {snapshot}");
    assert_eq!(
        hard["weights"].as_object().map(serde_json::Map::len),
        Some(0),
        "{snapshot}"
    );
    // With one answering challenge the vector is its normalized scores.
    let v = vector(&snapshot);
    assert_non_trivial(&v, &snapshot);
    assert_close(
        &v,
        &expected(&[(1.0, &quiz["weights"])], &hotkeys),
        &snapshot,
    );
    assert_eq!(
        challenge_processes(&dev.data_dir),
        running
            .iter()
            .filter(|(_, s)| s == "quiz")
            .cloned()
            .collect::<Vec<_>>(),
        "not restarted: the reconcile pass is an hour away"
    );

    dev.terminate().await;
    assert_clean_exit(&dev.data_dir);
}

#[tokio::test]
async fn restart_reuses_the_data_dir_and_serves_the_stored_snapshot_at_once() {
    let root = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + DEADLINE;

    let mut first = Dev::start(root.path(), 1, deadline);
    let published = first.first_snapshot(&client).await;
    let hotkeys = hotkeys(&first.data_dir);
    assert_full_snapshot(&published, &hotkeys);
    let data_dir = first.data_dir.clone();
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    assert!(!token.trim().is_empty());
    first.terminate().await;
    assert_clean_exit(&data_dir);
    drop(first);

    // The last snapshot of the first run, as stored.
    let last = {
        let url = format!("sqlite://{}", data_dir.join("base.sqlite3").display());
        let store = base_sdk::store::connect(&url).await.unwrap();
        store
            .latest_snapshot()
            .await
            .unwrap()
            .expect("a stored snapshot")
    };
    let last = serde_json::to_value(&last).unwrap();

    let mut second = Dev::start(root.path(), 2, deadline);
    // The very first answer, before any epoch of this run: the stored one.
    let base = second.base.clone();
    let answer = async || latest(&client, &base).await;
    let (status, served) = second.wait_for("the port to answer", answer).await;
    assert_eq!(status, StatusCode::OK, "{served}");
    assert_eq!(computed_at(&served), computed_at(&last), "served {served}");
    assert_eq!(served, last);

    // Same registry: two challenges, no duplicates, same admin token.
    let registry: Value = client
        .get(format!("{base}/v1/registry"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let slugs: Vec<&str> = registry["challenges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["quiz", "quiz-hard"], "{registry}");
    assert_eq!(
        std::fs::read_to_string(data_dir.join("admin.token")).unwrap(),
        token
    );
    let admin = client
        .get(format!("{base}/v1/admin/challenges"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        StatusCode::OK,
        "the stored admin token is in force"
    );
    let admin: Value = admin.json().await.unwrap();
    assert_eq!(admin["challenges"].as_array().unwrap().len(), 2, "{admin}");

    // The next epoch reaches both challenges (their sealed tokens still
    // open) and, the miners' answers being kept in the challenges' data,
    // gives the same vector.
    let stored_at = computed_at(&last);
    let next = async || {
        let (_, s) = latest(&client, &base).await?;
        (computed_at(&s) > stored_at).then_some(s)
    };
    let fresh = second
        .wait_for("the first epoch of the second run", next)
        .await;
    assert_full_snapshot(&fresh, &hotkeys);
    assert_close(&vector(&fresh), &vector(&last), &fresh);

    second.terminate().await;
    assert_clean_exit(&data_dir);
}
