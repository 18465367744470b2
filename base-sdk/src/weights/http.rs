//! The master's client of the challenge contract's `get_weights`.
//!
//! One pooled `reqwest` client serves every challenge; each call has a
//! timeout, a bounded number of retries with backoff (only for failures a
//! retry can fix: transport errors and 5xx), and a cap on the response
//! size so a misbehaving challenge cannot exhaust the master's memory.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::model::Slug;

/// Why a challenge's weights could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WeightsError {
    /// Connection refused, reset, DNS, timeout.
    #[error("challenge unreachable: {0}")]
    Unreachable(String),
    /// The challenge answered with a non-2xx status.
    #[error("challenge answered {status}: {detail}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its `detail` or body prefix.
        detail: String,
    },
    /// The body is not the contract's shape.
    #[error("invalid get_weights response: {0}")]
    Invalid(String),
    /// The orchestrator reports the service is not running, so it was not
    /// asked at all.
    #[error("challenge service not running: {0}")]
    NotRunning(String),
    /// Something on the master's side (token, orchestrator).
    #[error("{0}")]
    Master(String),
    /// The epoch could not be computed at all (metagraph down).
    #[error("epoch failed: {0}")]
    Epoch(String),
}

impl WeightsError {
    fn retryable(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Where and how to ask one challenge.
#[derive(Clone)]
pub struct WeightTarget {
    /// The challenge.
    pub slug: Slug,
    /// Its base URL (`http://challenge-<slug>:8000`).
    pub base_url: String,
    /// The challenge token the master presents.
    pub token: SecretString,
}

impl std::fmt::Debug for WeightTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightTarget")
            .field("slug", &self.slug)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// Something that yields a challenge's raw weights.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait WeightSource: Send + Sync {
    /// The challenge's raw `hotkey → score` map.
    async fn fetch(&self, target: &WeightTarget) -> Result<BTreeMap<String, f64>, WeightsError>;
}

/// `GET /internal/v1/get_weights` over HTTP.
#[derive(Debug, Clone)]
pub struct HttpWeightSource {
    client: reqwest::Client,
    timeout: Duration,
    retries: usize,
    max_body: usize,
}

#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    challenge_slug: Option<String>,
    weights: BTreeMap<String, f64>,
}

impl HttpWeightSource {
    /// A source with a per-attempt `timeout` and up to `retries` retries.
    pub fn new(timeout: Duration, retries: usize) -> Result<Self, WeightsError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| WeightsError::Master(format!("building HTTP client: {e}")))?;
        Ok(Self {
            client,
            timeout,
            retries,
            max_body: 32 << 20,
        })
    }

    /// Caps the accepted response body (default 32 MiB).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    async fn once(&self, t: &WeightTarget) -> Result<BTreeMap<String, f64>, WeightsError> {
        let url = format!(
            "{}/internal/v1/get_weights",
            t.base_url.trim_end_matches('/')
        );
        let resp = self
            .client
            .get(&url)
            .bearer_auth(t.token.expose_secret())
            .header("X-Base-Challenge-Slug", t.slug.as_str())
            .send()
            .await
            .map_err(|e| WeightsError::Unreachable(describe(&e, self.timeout)))?;
        let status = resp.status();
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| WeightsError::Unreachable(describe(&e, self.timeout)))?;
            if body.len() + chunk.len() > self.max_body {
                return Err(WeightsError::Invalid(format!(
                    "response larger than {} bytes",
                    self.max_body
                )));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let detail = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(WeightsError::Status {
                status: status.as_u16(),
                detail,
            });
        }
        let parsed: Body =
            serde_json::from_slice(&body).map_err(|e| WeightsError::Invalid(e.to_string()))?;
        if let Some(s) = parsed.challenge_slug.as_deref()
            && s != t.slug.as_str()
        {
            return Err(WeightsError::Invalid(format!(
                "challenge_slug '{s}' does not match '{}'",
                t.slug
            )));
        }
        Ok(parsed.weights)
    }
}

fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        format!("timed out after {timeout:?}")
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        // reqwest's Display names the URL, which holds no secret here.
        e.to_string()
    }
}

#[async_trait]
impl WeightSource for HttpWeightSource {
    async fn fetch(&self, target: &WeightTarget) -> Result<BTreeMap<String, f64>, WeightsError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(self.retries)
            .with_jitter();
        (|| self.once(target))
            .retry(backoff)
            .when(WeightsError::retryable)
            .await
    }
}
