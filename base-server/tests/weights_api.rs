//! `/v1/weights/latest` end to end inside the process: registry → epoch
//! (with a fake weight source) → store → published bytes → HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base_sdk::auth::AdminAuth;
use base_sdk::config::Environment;
use base_sdk::metagraph::{MetagraphSnapshot, StaticMetagraph};
use base_sdk::model::{ChallengeStatus, EmissionPercent};
use base_sdk::registry::{NewChallenge, Registry};
use base_sdk::vault::Vault;
use base_sdk::weights::http::MockWeightSource;
use base_sdk::weights::{EpochConfig, EpochRunner, WeightsError};
use base_server::{AppState, app};
use serde_json::Value;
use tower::ServiceExt;

async fn get_latest(state: &AppState) -> (StatusCode, Value) {
    let req = Request::builder()
        .uri("/v1/weights/latest")
        .body(Body::empty())
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn epoch_publishes_and_survives_a_failing_challenge() {
    let db = base_sdk::testing::sqlite().await.unwrap();
    let vault = Arc::new(Vault::from_text(&Vault::generate_key()).unwrap());
    let registry = Registry::new(db.store.clone(), Environment::Development).with_vault(vault);
    for (slug, emission) in [("alpha", 60.0), ("beta", 40.0), ("down", 50.0)] {
        registry
            .create(
                NewChallenge {
                    slug: slug.into(),
                    name: slug.into(),
                    image: "base.local/quiz:1".into(),
                    version: "1".into(),
                    emission_percent: Some(EmissionPercent(emission)),
                    status: Some(ChallengeStatus::Active),
                    internal_base_url: Some(format!("http://{slug}.invalid:8000")),
                    ..Default::default()
                },
                "test",
            )
            .await
            .unwrap();
    }
    let state = AppState::new(registry.clone(), AdminAuth::new(None), 100);
    let (status, body) = get_latest(&state).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["detail"].as_str().unwrap().contains("first epoch"));

    let mut source = MockWeightSource::new();
    source.expect_fetch().returning(|t| {
        use secrecy::ExposeSecret;
        assert_eq!(
            t.token.expose_secret().len(),
            43,
            "the revealed challenge token is presented"
        );
        match t.slug.as_str() {
            "alpha" => Ok(BTreeMap::from([("a".into(), 0.25), ("b".into(), 0.75)])),
            "beta" => Ok(BTreeMap::from([("b".into(), 1.0), ("c".into(), 1.0)])),
            _ => Err(WeightsError::Unreachable("connection failed".into())),
        }
    });
    let uids: HashMap<String, u16> = [("a", 1), ("b", 2), ("c", 3)]
        .into_iter()
        .map(|(h, u)| (h.to_string(), u))
        .collect();
    let metagraph = MetagraphSnapshot {
        uids,
        updated_at: base_sdk::model::now(),
        min_allowed_weights: 1,
    };
    let runner = EpochRunner::new(
        registry,
        None,
        Arc::new(source),
        Arc::new(StaticMetagraph(metagraph)),
        EpochConfig {
            netuid: 100,
            chain_endpoint: "ws://127.0.0.1:9944".into(),
            ..Default::default()
        },
    );
    let publish = state.weights().publisher();
    let snap = runner.run_once(publish.as_ref()).await.unwrap();

    let (status, body) = get_latest(&state).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a failing challenge never breaks the endpoint"
    );
    assert_eq!(body["uids"], serde_json::json!([1, 2, 3]));
    // The failed 50% challenge's share is redistributed: CONTRACTS §5 vector 1.
    let w: Vec<f64> = body["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for (got, want) in w.iter().zip([0.15, 0.65, 0.20]) {
        assert!((got - want).abs() < 1e-12, "{w:?}");
    }
    let sources = body["source_challenges"].as_array().unwrap();
    let down = sources.iter().find(|s| s["slug"] == "down").unwrap();
    assert_eq!(down["ok"], false);
    assert!(down["error"].as_str().unwrap().contains("unreachable"));
    assert_eq!(body["netuid"], 100);
    let computed = body["computed_at"].as_str().unwrap();
    assert!(computed.ends_with('Z'), "{computed}");
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let computed = chrono::DateTime::parse_from_rfc3339(computed).unwrap();
    assert_eq!((expires - computed).num_seconds(), 720);

    // A restart serves the stored snapshot before any new epoch.
    let stored = db.store.latest_snapshot().await.unwrap().unwrap();
    assert_eq!(stored, snap);
}

/// Two active challenges and a metagraph a→1, b→2; the source answers
/// while `up` is set and fails every challenge otherwise.
async fn flaky_runner(
    validity: chrono::Duration,
) -> (
    AppState,
    EpochRunner,
    Arc<std::sync::atomic::AtomicBool>,
    base_sdk::testing::TempSqlite,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = base_sdk::testing::sqlite().await.unwrap();
    let vault = Arc::new(Vault::from_text(&Vault::generate_key()).unwrap());
    let registry = Registry::new(db.store.clone(), Environment::Development).with_vault(vault);
    for slug in ["alpha", "beta"] {
        registry
            .create(
                NewChallenge {
                    slug: slug.into(),
                    name: slug.into(),
                    image: "base.local/quiz:1".into(),
                    version: "1".into(),
                    emission_percent: Some(EmissionPercent(50.0)),
                    status: Some(ChallengeStatus::Active),
                    internal_base_url: Some(format!("http://{slug}.invalid:8000")),
                    ..Default::default()
                },
                "test",
            )
            .await
            .unwrap();
    }
    let up = Arc::new(AtomicBool::new(true));
    let mut source = MockWeightSource::new();
    let flag = up.clone();
    source.expect_fetch().returning(move |t| {
        if flag.load(Ordering::SeqCst) {
            Ok(BTreeMap::from([("a".into(), 1.0), ("b".into(), 3.0)]))
        } else {
            Err(WeightsError::Status {
                status: 500,
                detail: format!("{} is down", t.slug),
            })
        }
    });
    let uids: HashMap<String, u16> = [("a".to_string(), 1), ("b".to_string(), 2)].into();
    let runner = EpochRunner::new(
        registry.clone(),
        None,
        Arc::new(source),
        Arc::new(StaticMetagraph(MetagraphSnapshot {
            uids,
            updated_at: base_sdk::model::now(),
            min_allowed_weights: 1,
        })),
        EpochConfig {
            netuid: 100,
            chain_endpoint: String::new(),
            validity,
        },
    );
    let state = AppState::new(registry, AdminAuth::new(None), 100);
    (state, runner, up, db)
}

/// An epoch in which every challenge fails does not replace the last good
/// vector while it is unexpired: `/v1/weights/latest` keeps serving it,
/// with `status: kept` and the failure in `last_epoch`; once it expires
/// the burn vector takes its place (`status: burn`). (Failed before the
/// fix: the failed epoch published the burn vector at once.)
#[tokio::test]
async fn a_failed_epoch_keeps_the_good_vector_until_it_expires() {
    use std::sync::atomic::Ordering;
    let (state, runner, up, db) = flaky_runner(chrono::Duration::seconds(3)).await;
    let publish = state.weights().publisher();

    runner.run_once(publish.as_ref()).await.unwrap();
    let (_, good) = get_latest(&state).await;
    assert_eq!(good["uids"], serde_json::json!([1, 2]));
    assert_eq!(good["status"], "ok");

    up.store(false, Ordering::SeqCst);
    runner.run_once(publish.as_ref()).await.unwrap();
    let (status, kept) = get_latest(&state).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kept["uids"], serde_json::json!([1, 2]), "{kept}");
    assert_eq!(kept["weights"], good["weights"]);
    assert_eq!(kept["computed_at"], good["computed_at"]);
    assert_eq!(kept["expires_at"], good["expires_at"]);
    assert_eq!(kept["status"], "kept");
    assert_eq!(kept["last_epoch"]["ok"], false);
    let why = kept["last_epoch"]["error"].as_str().unwrap();
    assert!(
        why.contains("every active challenge failed") && why.contains("alpha is down"),
        "{why}"
    );
    // A restart keeps serving it too.
    let stored = db.store.latest_snapshot().await.unwrap().unwrap();
    assert_eq!(stored.uids, vec![1, 2]);

    // Past the good vector's expiry, a failed epoch serves the burn vector.
    let expires = chrono::DateTime::parse_from_rfc3339(good["expires_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let wait = (expires - chrono::Utc::now()).num_milliseconds().max(0) as u64 + 200;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    runner.run_once(publish.as_ref()).await.unwrap();
    let (_, burn) = get_latest(&state).await;
    assert_eq!(burn["uids"], serde_json::json!([0]), "{burn}");
    assert_eq!(burn["weights"], serde_json::json!([1.0]));
    assert_eq!(burn["status"], "burn");
    assert_eq!(burn["last_epoch"]["ok"], false);

    // Challenges back: a fresh vector, status ok, no failure reported.
    up.store(true, Ordering::SeqCst);
    runner.run_once(publish.as_ref()).await.unwrap();
    let (_, back) = get_latest(&state).await;
    assert_eq!(back["uids"], serde_json::json!([1, 2]));
    assert_eq!(back["status"], "ok");
    assert!(back.get("last_epoch").is_none(), "{back}");
}

/// With no good vector yet, a failed epoch serves the burn vector as before.
#[tokio::test]
async fn a_failed_first_epoch_serves_the_burn_vector() {
    use std::sync::atomic::Ordering;
    let (state, runner, up, _db) = flaky_runner(chrono::Duration::seconds(720)).await;
    up.store(false, Ordering::SeqCst);
    runner
        .run_once(state.weights().publisher().as_ref())
        .await
        .unwrap();
    let (_, body) = get_latest(&state).await;
    assert_eq!(body["uids"], serde_json::json!([0]));
    assert_eq!(body["status"], "burn");
}

/// The served vector carries the master's signature over the exact body
/// bytes, which verifies with its public key and with no other. (Failed
/// before the fix: no signature header.)
#[tokio::test]
async fn the_served_vector_is_signed_over_its_exact_bytes() {
    use base_sdk::weights::signing::{KEY_HEADER, SIGNATURE_HEADER, WeightsKey};
    let (state, runner, _up, _db) = flaky_runner(chrono::Duration::seconds(720)).await;
    let key = Arc::new(WeightsKey::from_seed(&[9u8; 32]));
    state.weights().set_key(key.clone());
    runner
        .run_once(state.weights().publisher().as_ref())
        .await
        .unwrap();
    let req = Request::builder()
        .uri("/v1/weights/latest")
        .body(Body::empty())
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let sig = resp
        .headers()
        .get(SIGNATURE_HEADER)
        .expect("signature header")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        resp.headers().get(KEY_HEADER).unwrap().to_str().unwrap(),
        key.public().to_string()
    );
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    key.public().verify(&body, Some(&sig)).unwrap();
    assert!(
        WeightsKey::from_seed(&[8u8; 32])
            .public()
            .verify(&body, Some(&sig))
            .is_err()
    );
    let mut tampered = body.to_vec();
    let at = tampered.iter().position(|b| *b == b'2').unwrap();
    tampered[at] = b'3';
    assert!(key.public().verify(&tampered, Some(&sig)).is_err());
}

/// Runs `base-server master` with `env` (and nothing else from the
/// caller's environment that starts with `BASE_`), in `cwd`; returns
/// whether it exited on its own with a failure, and its output (it is
/// killed after 30 s: a master that starts does not exit).
fn run_master(env: &[(&str, String)], cwd: &std::path::Path) -> (bool, String) {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_base-server"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BASE_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("master")
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("BASE_LISTEN", "127.0.0.1:0")
        .env("BASE_BROKER_ENABLED", "false")
        .env("BASE_ORCHESTRATOR", "none")
        .env("BASE_DATA_DIR", cwd.join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning base-server master");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut failed = false;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            failed = !status.success();
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (failed, text)
}

/// `master` refuses to start, naming the key, when the tokens it stores
/// do not open with the configured sealing key. (Failed before the fix:
/// it started and every epoch failed to reveal the tokens.)
#[tokio::test]
async fn master_refuses_tokens_sealed_under_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("base.sqlite3").display());
    {
        let store = base_sdk::store::connect(&url).await.unwrap();
        let old_key = Vault::generate_key();
        let registry = Registry::new(store, Environment::Development)
            .with_vault(Arc::new(Vault::from_text(&old_key).unwrap()));
        registry
            .create(
                NewChallenge {
                    slug: "quiz".into(),
                    name: "quiz".into(),
                    image: "base.local/quiz:1".into(),
                    version: "1".into(),
                    ..Default::default()
                },
                "test",
            )
            .await
            .unwrap();
    }
    use secrecy::ExposeSecret;
    let other = Vault::generate_key().expose_secret().to_string();
    let (failed, out) = run_master(
        &[
            ("BASE_DATABASE_URL", url),
            ("BASE_SECRET_KEY", other.clone()),
            ("BASE_WEIGHTS_KEY", format!("0x{}", "11".repeat(32))),
        ],
        dir.path(),
    );
    assert!(failed, "it must refuse to start: {out}");
    assert!(out.contains("BASE_SECRET_KEY"), "{out}");
    assert!(out.contains("quiz"), "names the token: {out}");
    assert!(!out.contains(&other), "the key is never printed: {out}");
}

/// Outside `dev`, `master` never makes up a sealing key or a weights key:
/// a missing one is an error naming it, and no key file appears. (Failed
/// before the fix: a development master wrote `<data_dir>/secret.key`.)
#[tokio::test]
async fn master_never_generates_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("base.sqlite3").display());
    let (failed, out) = run_master(
        &[
            ("BASE_DATABASE_URL", url.clone()),
            ("BASE_WEIGHTS_KEY", format!("0x{}", "11".repeat(32))),
        ],
        dir.path(),
    );
    assert!(failed, "it must refuse to start: {out}");
    assert!(out.contains("BASE_SECRET_KEY"), "{out}");
    assert!(!dir.path().join("data/secret.key").exists());

    let (failed, out) = run_master(
        &[
            ("BASE_DATABASE_URL", url),
            ("BASE_SECRET_KEY", "00".repeat(32)),
        ],
        dir.path(),
    );
    assert!(failed, "it must refuse to start: {out}");
    assert!(out.contains("BASE_WEIGHTS_KEY"), "{out}");
    assert!(!dir.path().join("data/weights.key").exists());
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        files.iter().all(|f| !f.to_string_lossy().contains("key")),
        "{files:?}"
    );
}

/// An epoch that cannot compute at all (the metagraph is unreadable)
/// leaves the last vector served but reports the failure on it: `kept`,
/// with the error in `last_epoch`. (Failed before the fix: nothing said the
/// epochs were failing.)
#[tokio::test]
async fn an_unreadable_metagraph_is_reported_on_the_served_vector() {
    let (state, flaky, _up, _db) = flaky_runner(chrono::Duration::seconds(720)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metagraph.json");
    std::fs::write(&path, r#"{"hotkeys": ["owner", "a", "b"]}"#).unwrap();
    let runner = EpochRunner::new(
        flaky.registry.clone(),
        None,
        flaky.source.clone(),
        Arc::new(base_sdk::metagraph::FileMetagraph::new(&path)),
        flaky.config.clone(),
    );
    let publish = state.weights().publisher();
    runner.run_once(publish.as_ref()).await.unwrap();
    let (_, good) = get_latest(&state).await;
    assert_eq!(good["status"], "ok");

    std::fs::remove_file(&path).unwrap();
    assert!(runner.run_once(publish.as_ref()).await.is_err());
    let (status, body) = get_latest(&state).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["uids"], good["uids"]);
    assert_eq!(body["status"], "kept");
    assert_eq!(body["last_epoch"]["ok"], false);
    assert!(
        body["last_epoch"]["error"]
            .as_str()
            .unwrap()
            .contains("metagraph"),
        "{body}"
    );
}
