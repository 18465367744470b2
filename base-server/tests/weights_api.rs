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
    let runner = EpochRunner {
        registry,
        orchestrator: None,
        source: Arc::new(source),
        metagraph: Arc::new(StaticMetagraph(metagraph)),
        config: EpochConfig {
            netuid: 100,
            chain_endpoint: "ws://127.0.0.1:9944".into(),
            ..Default::default()
        },
    };
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
