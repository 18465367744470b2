//! The master's `get_weights` client against real HTTP servers on loopback:
//! headers, retries only where a retry can help, timeouts, size caps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use base_sdk::model::Slug;
use base_sdk::weights::{HttpWeightSource, WeightSource, WeightTarget, WeightsError};
use secrecy::SecretString;

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn target(base_url: String) -> WeightTarget {
    WeightTarget {
        slug: Slug::parse("quiz").unwrap(),
        base_url,
        token: SecretString::from("tok".to_string()),
    }
}

#[tokio::test]
async fn sends_contract_headers_and_parses_weights() {
    let app = Router::new().route(
        "/internal/v1/get_weights",
        get(|h: HeaderMap| async move {
            let auth = h.get("authorization").and_then(|v| v.to_str().ok());
            let slug = h.get("x-base-challenge-slug").and_then(|v| v.to_str().ok());
            if auth != Some("Bearer tok") || slug != Some("quiz") {
                return (StatusCode::UNAUTHORIZED, "{}").into_response();
            }
            axum::Json(serde_json::json!({
                "challenge_slug": "quiz", "epoch": 1, "weights": {"a": 0.5, "b": 2}, "metadata": {}
            }))
            .into_response()
        }),
    );
    let url = serve(app).await;
    let src = HttpWeightSource::new(Duration::from_secs(2), 2).unwrap();
    let w = src.fetch(&target(url)).await.unwrap();
    assert_eq!(w, BTreeMap::from([("a".into(), 0.5), ("b".into(), 2.0)]));
}

#[tokio::test]
async fn retries_server_errors_but_not_client_errors() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let flaky = Router::new().route(
        "/internal/v1/get_weights",
        get(move || {
            let n = h.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    (StatusCode::BAD_GATEWAY, "busy").into_response()
                } else {
                    axum::Json(serde_json::json!({"weights": {"x": 1.0}})).into_response()
                }
            }
        }),
    );
    let url = serve(flaky).await;
    let src = HttpWeightSource::new(Duration::from_secs(2), 3).unwrap();
    assert_eq!(src.fetch(&target(url)).await.unwrap().len(), 1);
    assert_eq!(hits.load(Ordering::SeqCst), 3, "two retries then success");

    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let denied = Router::new().route(
        "/internal/v1/get_weights",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({"detail": "bad token"})),
                )
            }
        }),
    );
    let url = serve(denied).await;
    let err = src.fetch(&target(url)).await.unwrap_err();
    assert!(
        matches!(&err, WeightsError::Status { status: 401, detail } if detail == "bad token"),
        "{err:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a 401 is not retried");
}

#[tokio::test]
async fn bounded_failures() {
    // Nothing listening: a bounded number of attempts, then Unreachable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let src = HttpWeightSource::new(Duration::from_millis(300), 1).unwrap();
    assert!(matches!(
        src.fetch(&target(dead)).await,
        Err(WeightsError::Unreachable(_))
    ));

    let slow = Router::new().route(
        "/internal/v1/get_weights",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "{}"
        }),
    );
    let url = serve(slow).await;
    let err = src.fetch(&target(url)).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");

    let huge = Router::new().route(
        "/internal/v1/get_weights",
        get(|| async { "x".repeat(4096) }),
    );
    let url = serve(huge).await;
    let capped = HttpWeightSource::new(Duration::from_secs(2), 0)
        .unwrap()
        .with_max_body(1024);
    let err = capped.fetch(&target(url)).await.unwrap_err();
    assert!(err.to_string().contains("larger than 1024"), "{err}");

    let wrong = Router::new().route(
        "/internal/v1/get_weights",
        get(|| async { axum::Json(serde_json::json!({"challenge_slug": "other", "weights": {}})) }),
    );
    let url = serve(wrong).await;
    let err = capped.fetch(&target(url)).await.unwrap_err();
    assert!(matches!(err, WeightsError::Invalid(m) if m.contains("does not match")));
}
