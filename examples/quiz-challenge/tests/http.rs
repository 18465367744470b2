//! The quiz challenge over real HTTP, as the master and miners see it:
//! scoring reaches `get_weights`, the contract's auth rules hold on a real
//! challenge, submissions are validated, and the shipped binary starts
//! from environment variables alone.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use base_sdk::challenge::{
    self, ChallengeSettings, HealthResponse, VersionResponse, WeightsResponse,
};
use base_sdk::model::Slug;
use quiz_challenge::{
    LeaderboardResponse, Quiz, QuizOptions, Submission, TasksResponse, generate_tasks,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "test-only-challenge-token-0123456789";

/// A running quiz on a free loopback port; stops when dropped.
struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn start(db: &Path, options: QuizOptions, token: Option<&str>) -> Running {
    let mut settings = ChallengeSettings::new(Slug::parse("quiz").unwrap())
        .with_database_url(&format!("sqlite+aiosqlite:///{}", db.display()))
        .unwrap();
    if let Some(t) = token {
        settings = settings.with_shared_token(t);
    }
    let pool = challenge::open_database(&settings).await.unwrap();
    let quiz = Arc::new(Quiz::new(pool, options).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        challenge::serve_listener(listener, settings, quiz, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running {
        base,
        stop: Some(tx),
        task: Some(task),
    }
}

fn options(task_count: u32) -> QuizOptions {
    QuizOptions {
        seed: 11,
        task_count,
    }
}

async fn submit(base: &str, hotkey: &str, task_id: u32, answer: i64) -> (StatusCode, Value) {
    let res = reqwest::Client::new()
        .post(format!("{base}/submissions"))
        .json(&json!({"hotkey": hotkey, "task_id": task_id, "answer": answer}))
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

async fn get_weights(base: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().get(format!("{base}/internal/v1/get_weights"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    (res.status(), res.json().await.unwrap())
}

fn master() -> [(&'static str, String); 2] {
    [
        ("authorization", format!("Bearer {TOKEN}")),
        ("x-base-challenge-slug", "quiz".to_string()),
    ]
}

async fn weights_as_master(base: &str) -> WeightsResponse {
    let h = master();
    let (s, body) = get_weights(base, &[(h[0].0, &h[0].1), (h[1].0, &h[1].1)]).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    serde_json::from_value(body).unwrap()
}

#[tokio::test]
async fn the_better_hotkey_gets_the_higher_weight() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir.path().join("q.sqlite3"), options(10), Some(TOKEN)).await;

    let tasks: TasksResponse = reqwest::get(format!("{}/tasks", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tasks.seed, 11);
    assert_eq!(tasks.tasks.len(), 10);
    let truth = generate_tasks(11, 10);
    for (view, task) in tasks.tasks.iter().zip(&truth) {
        assert_eq!((view.id, view.question.clone()), (task.id, task.question()));
    }

    for t in &truth {
        let (s, body) = submit(&app.base, "5Alice", t.id, t.answer()).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        assert_eq!(body["correct"], true);
    }
    for t in &truth[..5] {
        // Three right, two wrong.
        let answer = if t.id < 3 { t.answer() } else { t.answer() + 1 };
        let (s, body) = submit(&app.base, "5Bob", t.id, answer).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        assert_eq!(body["correct"], t.id < 3);
    }

    let w = weights_as_master(&app.base).await;
    assert_eq!(w.challenge_slug, "quiz");
    assert_eq!(w.weights.len(), 2);
    assert_eq!(w.weights["5Alice"], 1.0);
    assert!((w.weights["5Bob"] - 0.3).abs() < 1e-12);
    assert!(w.weights["5Alice"] > w.weights["5Bob"]);

    let board: LeaderboardResponse = reqwest::get(format!("{}/leaderboard", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let order: Vec<_> = board
        .entries
        .iter()
        .map(|e| (e.hotkey.as_str(), e.answered, e.correct))
        .collect();
    assert_eq!(order, [("5Alice", 10, 10), ("5Bob", 5, 3)]);
    app.stop().await;
}

#[tokio::test]
async fn get_weights_auth_rules() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir.path().join("q.sqlite3"), options(3), Some(TOKEN)).await;
    let good_auth = format!("Bearer {TOKEN}");

    let (s, body) = get_weights(
        &app.base,
        &[
            ("authorization", "Bearer wrong-token"),
            ("x-base-challenge-slug", "quiz"),
        ],
    )
    .await;
    assert_eq!(
        (s, body),
        (
            StatusCode::UNAUTHORIZED,
            json!({"detail": "invalid challenge token"})
        )
    );
    let (s, _) = get_weights(&app.base, &[("x-base-challenge-slug", "quiz")]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body) = get_weights(&app.base, &[("authorization", &good_auth)]).await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"detail": "missing challenge slug"})
        )
    );
    let (s, body) = get_weights(
        &app.base,
        &[
            ("authorization", &good_auth),
            ("x-base-challenge-slug", "other"),
        ],
    )
    .await;
    assert_eq!(
        (s, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"detail": "challenge slug mismatch"})
        )
    );
    // Nobody submitted yet: an empty vector, not an error.
    assert!(weights_as_master(&app.base).await.weights.is_empty());
    app.stop().await;

    let app = start(&dir.path().join("q2.sqlite3"), options(3), None).await;
    let (s, body) = get_weights(
        &app.base,
        &[
            ("authorization", &good_auth),
            ("x-base-challenge-slug", "quiz"),
        ],
    )
    .await;
    assert_eq!(
        (s, body),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"detail": "challenge token not configured"})
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn health_and_version_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir.path().join("q.sqlite3"), options(3), None).await;
    let h: HealthResponse = reqwest::get(format!("{}/health", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (h.status.as_str(), h.slug.as_str(), h.version.as_str()),
        ("ok", "quiz", "0.1.0")
    );
    let v: VersionResponse = reqwest::get(format!("{}/version", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v.api_version, "1.0");
    assert_eq!(v.challenge_version, "0.1.0");
    assert_eq!(v.capabilities, ["get_weights", "proxy_routes"]);
    app.stop().await;
}

#[tokio::test]
async fn submissions_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir.path().join("q.sqlite3"), options(3), Some(TOKEN)).await;
    let answer = generate_tasks(11, 3)[0].answer();

    let (s, first) = submit(&app.base, "5Carol", 0, answer).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, body) = submit(&app.base, "5Carol", 0, answer).await;
    assert_eq!(
        (s, body),
        (
            StatusCode::CONFLICT,
            json!({"detail": "task 0 already answered by this hotkey"})
        )
    );
    let (s, body) = submit(&app.base, "5Carol", 3, 0).await;
    assert_eq!(
        (s, body),
        (StatusCode::NOT_FOUND, json!({"detail": "unknown task 3"}))
    );
    let (s, body) = submit(&app.base, "not a hotkey!", 1, 0).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, body) = submit(&app.base, &"5".repeat(65), 1, 0).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");

    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/submissions", app.base))
        .json(&json!({"task_id": 1, "answer": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("hotkey"),
        "{body}"
    );
    let res = client
        .post(format!("{}/submissions", app.base))
        .header("content-type", "application/json")
        .body(r#"{"hotkey": "5Carol", "task_id": "one"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.unwrap();
    assert!(body["detail"].is_string(), "{body}");

    let id = first["id"].as_i64().unwrap();
    let got: Submission = reqwest::get(format!("{}/submissions/{id}", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            got.hotkey.as_str(),
            got.task_id,
            got.correct.unwrap_or(false)
        ),
        ("5Carol", 0, true)
    );
    let res = reqwest::get(format!("{}/submissions/999", app.base))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn the_verified_hotkey_wins_and_the_bridge_needs_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(&dir.path().join("q.sqlite3"), options(3), Some(TOKEN)).await;
    let tasks = generate_tasks(11, 3);
    let client = reqwest::Client::new();

    let res = client
        .post(format!("{}/submissions", app.base))
        .header("x-base-verified-hotkey", "5Verified")
        .json(&json!({"hotkey": "5Claimed", "task_id": 0, "answer": tasks[0].answer()}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let s: Submission = res.json().await.unwrap();
    assert_eq!(s.hotkey, "5Verified");

    let bridge = format!("{}/internal/v1/bridge/submissions", app.base);
    let body = json!({"task_id": 1, "answer": tasks[1].answer()});
    let res = client
        .post(&bridge)
        .header("x-base-verified-hotkey", "5Verified")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let [(ak, av), (sk, sv)] = master();
    let res = client
        .post(&bridge)
        .header(ak, &av)
        .header(sk, &sv)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "no verified hotkey");
    let res = client
        .post(&bridge)
        .header(ak, &av)
        .header(sk, &sv)
        .header("x-base-verified-hotkey", "5Verified")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);

    let w = weights_as_master(&app.base).await;
    assert_eq!(w.weights.keys().collect::<Vec<_>>(), ["5Verified"]);
    assert!((w.weights["5Verified"] - 2.0 / 3.0).abs() < 1e-12);
    app.stop().await;
}

#[tokio::test]
async fn scores_survive_a_restart_and_a_new_seed_is_a_new_round() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/q.sqlite3");
    let app = start(&db, options(2), Some(TOKEN)).await;
    let t = generate_tasks(11, 2);
    submit(&app.base, "5Dave", 0, t[0].answer()).await;
    app.stop().await;

    let app = start(&db, options(2), Some(TOKEN)).await;
    assert_eq!(weights_as_master(&app.base).await.weights["5Dave"], 0.5);
    app.stop().await;

    let app = start(
        &db,
        QuizOptions {
            seed: 12,
            task_count: 2,
        },
        Some(TOKEN),
    )
    .await;
    assert!(weights_as_master(&app.base).await.weights.is_empty());
    app.stop().await;
}

/// The shipped binary, configured only through environment variables (the
/// token through the production `_FILE` path), stops cleanly on SIGTERM.
#[cfg(unix)]
#[tokio::test]
async fn the_binary_runs_from_env_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("challenge_token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_quiz-challenge"))
        .env_clear()
        .env("CHALLENGE_SLUG", "quiz")
        .env("CHALLENGE_SHARED_TOKEN_FILE", &token_file)
        .env(
            "CHALLENGE_DATABASE_URL",
            format!(
                "sqlite+aiosqlite:///{}/data/challenge.sqlite3",
                dir.path().display()
            ),
        )
        .env("CHALLENGE_LISTEN", format!("127.0.0.1:{port}"))
        .env("QUIZ_TASKS", "4")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");

    let mut healthy = false;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("{base}/health")).await {
            healthy = r.status() == StatusCode::OK;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(healthy, "the binary never answered /health");
    let tasks: TasksResponse = reqwest::get(format!("{base}/tasks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tasks.tasks.len(), 4);
    assert_eq!(tasks.seed, quiz_challenge::DEFAULT_SEED);
    let (s, _) = submit(&base, "5Erin", 0, generate_tasks(tasks.seed, 4)[0].answer()).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(weights_as_master(&base).await.weights["5Erin"], 0.25);
    assert!(dir.path().join("data/challenge.sqlite3").exists());

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("the binary did not stop on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
