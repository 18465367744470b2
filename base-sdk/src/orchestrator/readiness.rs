//! Is a challenge service ready to be weighted and proxied to?
//!
//! A running container is not a ready challenge: the image may be the wrong
//! version, speak another contract version, or lack a capability the record
//! requires. CONTRACTS.md §2 defines readiness from `/health` and
//! `/version`; [`evaluate`] applies those rules to the two answers as a pure
//! function (so every rule has a unit test), and [`probe_readiness`] is the
//! small HTTP client that fetches them. Neither endpoint needs a token, so
//! nothing secret is involved here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The contract version a challenge must serve in `/version`.
pub const REQUIRED_API_VERSION: &str = "1.0";

/// How long each of the two requests may take in [`probe_readiness`].
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of a readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Readiness {
    /// Every rule holds.
    Ready,
    /// The service answered, or failed to, in a way that breaks a rule.
    NotReady {
        /// Which rule failed, for operators (`/status`, logs).
        reason: String,
    },
}

impl Readiness {
    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready)
    }

    fn not_ready(reason: impl Into<String>) -> Self {
        Self::NotReady {
            reason: reason.into(),
        }
    }
}

/// `GET /health`, as far as readiness reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthAnswer {
    /// Must be `ok`.
    #[serde(default)]
    pub status: String,
    /// Must equal the expected slug when present (older images omit it).
    #[serde(default)]
    pub slug: Option<String>,
}

/// `GET /version`, as far as readiness reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionAnswer {
    /// Must be [`REQUIRED_API_VERSION`].
    #[serde(default)]
    pub api_version: String,
    /// Must equal the record's version.
    #[serde(default)]
    pub challenge_version: String,
    /// Must include every required capability.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// Applies the CONTRACTS.md §2 readiness rules to the two answers. The
/// first failing rule is reported, in the order health, slug, API version,
/// challenge version, capabilities.
pub fn evaluate(
    health: &HealthAnswer,
    version: &VersionAnswer,
    expected_slug: &str,
    expected_version: &str,
    required_capabilities: &[String],
) -> Readiness {
    if health.status != "ok" {
        return Readiness::not_ready(format!("/health status is '{}', not 'ok'", health.status));
    }
    if let Some(slug) = &health.slug
        && slug != expected_slug
    {
        return Readiness::not_ready(format!(
            "/health reports slug '{slug}', expected '{expected_slug}'"
        ));
    }
    if version.api_version != REQUIRED_API_VERSION {
        return Readiness::not_ready(format!(
            "/version api_version is '{}', expected '{REQUIRED_API_VERSION}'",
            version.api_version
        ));
    }
    if version.challenge_version != expected_version {
        return Readiness::not_ready(format!(
            "/version challenge_version is '{}', the record says '{expected_version}'",
            version.challenge_version
        ));
    }
    let missing: Vec<&str> = required_capabilities
        .iter()
        .filter(|c| !version.capabilities.contains(c))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Readiness::not_ready(format!(
            "/version lacks required capabilities: {}",
            missing.join(", ")
        ));
    }
    Readiness::Ready
}

/// Fetches `/health` and `/version` from `base_url` (e.g.
/// `http://challenge-quiz:8000`) and [`evaluate`]s them. Every failure —
/// connection, timeout, non-2xx, malformed JSON — is a
/// [`Readiness::NotReady`] with the reason, never an error: "not reachable"
/// is a readiness answer.
pub async fn probe_readiness(
    base_url: &str,
    expected_slug: &str,
    expected_version: &str,
    required_capabilities: &[String],
) -> Readiness {
    let client = match reqwest::Client::builder().timeout(PROBE_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return Readiness::not_ready(format!("building HTTP client: {e}")),
    };
    let base = base_url.trim_end_matches('/');
    let health: HealthAnswer = match get_json(&client, &format!("{base}/health")).await {
        Ok(h) => h,
        Err(reason) => return Readiness::not_ready(reason),
    };
    let version: VersionAnswer = match get_json(&client, &format!("{base}/version")).await {
        Ok(v) => v,
        Err(reason) => return Readiness::not_ready(reason),
    };
    evaluate(
        &health,
        &version,
        expected_slug,
        expected_version,
        required_capabilities,
    )
}

/// One GET decoded as JSON; the error is a reason for operators.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
) -> Result<T, String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    resp.json::<T>()
        .await
        .map_err(|e| format!("GET {url}: malformed answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(status: &str, slug: Option<&str>) -> HealthAnswer {
        HealthAnswer {
            status: status.into(),
            slug: slug.map(str::to_string),
        }
    }

    fn version(api: &str, v: &str, caps: &[&str]) -> VersionAnswer {
        VersionAnswer {
            api_version: api.into(),
            challenge_version: v.into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn required() -> Vec<String> {
        vec!["get_weights".into(), "proxy_routes".into()]
    }

    #[test]
    fn all_rules_hold() {
        let h = health("ok", Some("quiz"));
        let v = version("1.0", "0.1.0", &["get_weights", "proxy_routes", "extra"]);
        assert_eq!(
            evaluate(&h, &v, "quiz", "0.1.0", &required()),
            Readiness::Ready
        );
        // A missing slug in /health is accepted (older images).
        let h = health("ok", None);
        assert!(evaluate(&h, &v, "quiz", "0.1.0", &required()).is_ready());
        // No required capabilities: any list will do.
        let v = version("1.0", "0.1.0", &[]);
        assert!(evaluate(&h, &v, "quiz", "0.1.0", &[]).is_ready());
    }

    #[test]
    fn each_rule_fails_on_its_own() {
        let good_v = version("1.0", "0.1.0", &["get_weights", "proxy_routes"]);
        let cases = [
            (health("degraded", Some("quiz")), good_v.clone(), "status"),
            (health("ok", Some("other")), good_v.clone(), "slug 'other'"),
            (
                health("ok", Some("quiz")),
                version("2.0", "0.1.0", &["get_weights", "proxy_routes"]),
                "api_version",
            ),
            (
                health("ok", Some("quiz")),
                version("1.0", "0.2.0", &["get_weights", "proxy_routes"]),
                "challenge_version is '0.2.0'",
            ),
            (
                health("ok", Some("quiz")),
                version("1.0", "0.1.0", &["get_weights"]),
                "lacks required capabilities: proxy_routes",
            ),
        ];
        for (h, v, expected) in cases {
            match evaluate(&h, &v, "quiz", "0.1.0", &required()) {
                Readiness::NotReady { reason } => {
                    assert!(reason.contains(expected), "{reason} lacks {expected}")
                }
                Readiness::Ready => panic!("{h:?} {v:?} should not be ready"),
            }
        }
    }

    #[tokio::test]
    async fn probe_reports_unreachable_as_not_ready() {
        // Port 9 on loopback: nothing listens (discard is never enabled).
        let r = probe_readiness("http://127.0.0.1:9", "quiz", "0.1.0", &required()).await;
        assert!(!r.is_ready());
    }

    #[tokio::test]
    async fn probe_reads_a_real_server() {
        use axum::{Json, Router, routing::get};
        let app = Router::new()
            .route(
                "/health",
                get(|| async {
                    Json(serde_json::json!({"status":"ok","slug":"quiz","version":"0.1.0"}))
                }),
            )
            .route(
                "/version",
                get(|| async {
                    Json(serde_json::json!({
                        "api_version":"1.0","challenge_version":"0.1.0","sdk_version":"x",
                        "capabilities":["get_weights","proxy_routes"]
                    }))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}/");
        assert!(
            probe_readiness(&url, "quiz", "0.1.0", &required())
                .await
                .is_ready()
        );
        let r = probe_readiness(&url, "quiz", "0.2.0", &required()).await;
        assert!(!r.is_ready(), "{r:?}");
    }
}
