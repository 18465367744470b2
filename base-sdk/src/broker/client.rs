//! The broker's client: what a challenge (or any integrator holding a
//! challenge's broker token) calls to run evaluation jobs — the
//! asynchronous job API (`submit_job`, `wait`, `logs`, `cancel`) and the
//! Python-compatible synchronous `run`.
//!
//! One pooled `reqwest` client per [`BrokerClient`]; the token lives in a
//! [`SecretString`] and never reaches `Debug` output or logs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::request::{
    BrokerRunRequest, BrokerRunResponse, CleanupRequest, ListRequest, ListResponse,
};
use crate::model::{JobOutput, JobRecord};
use crate::orchestrator::{JobLogs, JobState, LogStreamKind};

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The settings are incomplete or unreadable.
    #[error("broker client settings: {0}")]
    Config(String),
    /// The broker could not be reached or the connection broke.
    #[error("broker unreachable: {0}")]
    Transport(#[source] reqwest::Error),
    /// The broker answered with an error; `detail` is its message.
    #[error("broker answered {status}: {detail}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The broker's `detail`.
        detail: String,
    },
    /// The answer was not the expected JSON.
    #[error("unexpected broker answer: {0}")]
    Decode(String),
    /// A writable mount's contents did not come back, or cannot be read.
    #[error("output of {target}: {detail}")]
    Output {
        /// The mount's target.
        target: String,
        /// Why.
        detail: String,
    },
}

/// The answer of `GET /v1/jobs/{id}/outputs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutputsView {
    /// What came back from each writable mount, in mount order.
    pub outputs: Vec<JobOutput>,
}

/// The files of a writable mount's output (path relative to the mount →
/// contents), checked with the rules of an input archive.
pub fn output_files(
    output: &JobOutput,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, ClientError> {
    let fail = |detail: String| ClientError::Output {
        target: output.target.clone(),
        detail,
    };
    match (&output.archive_b64, &output.error) {
        (Some(b64), _) => super::archive::decode(b64, &super::archive::ArchiveLimits::default())
            .map_err(|e| fail(e.to_string())),
        (None, Some(why)) => Err(fail(why.clone())),
        (None, None) => Err(fail("nothing came back".to_string())),
    }
}

/// A job as `GET /v1/jobs/{id}` shows it (no output: see `logs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The broker's id.
    pub id: String,
    /// The challenge's job id.
    pub job_id: String,
    /// The challenge's task id.
    pub task_id: Option<String>,
    /// The image.
    pub image: String,
    /// `queued`, `pulling`, `running`, `succeeded`, `failed`, `timed_out`
    /// or `cancelled`.
    pub state: JobState,
    /// The exit code once it ended (124 when timed out).
    pub exit_code: Option<i64>,
    /// Why it failed, was stopped or never started.
    pub error: Option<String>,
    /// The node it ran on.
    pub node_id: Option<String>,
    /// GPUs leased for it.
    pub gpu_count: u32,
    /// When the broker accepted it.
    pub created_at: DateTime<Utc>,
    /// When its process started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// When it is removed at the latest.
    pub deadline_at: Option<DateTime<Utc>>,
}

impl From<&JobRecord> for JobView {
    fn from(r: &JobRecord) -> Self {
        Self {
            id: r.id.clone(),
            job_id: r.job_id.clone(),
            task_id: r.task_id.clone(),
            image: r.image.clone(),
            state: r.state,
            exit_code: r.exit_code,
            error: r.error.clone(),
            node_id: r.node_id.clone(),
            gpu_count: r.gpu_count,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            deadline_at: r.deadline_at,
        }
    }
}

/// One line of `GET /v1/jobs/{id}/logs?follow=true` (newline-delimited
/// JSON): a piece of output as it was produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// `stdout` or `stderr`.
    pub stream: LogStreamKind,
    /// The text (lossy UTF-8 of the chunk).
    pub data: String,
}

/// Talks to one broker as one challenge.
#[derive(Clone)]
pub struct BrokerClient {
    http: reqwest::Client,
    base_url: String,
    slug: String,
    token: SecretString,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerClient")
            .field("base_url", &self.base_url)
            .field("slug", &self.slug)
            .finish_non_exhaustive()
    }
}

/// Longest single long-poll of `wait` (the broker caps it as well).
const WAIT_SLICE: Duration = Duration::from_secs(30);

impl BrokerClient {
    /// A client for the broker at `base_url` (e.g. `http://base-broker:18082`),
    /// calling as challenge `slug` with its broker token.
    pub fn new(
        base_url: impl Into<String>,
        slug: impl Into<String>,
        token: SecretString,
    ) -> Result<Self, ClientError> {
        let base_url = base_url.into().trim_end_matches('/').to_string();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ClientError::Config(format!(
                "broker URL '{base_url}' must start with http:// or https://"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        Ok(Self {
            http,
            base_url,
            slug: slug.into(),
            token,
        })
    }

    /// The client a challenge service gets from its environment
    /// (CONTRACTS.md §2): `CHALLENGE_DOCKER_BROKER_URL`, `CHALLENGE_SLUG`
    /// and the token file named by `CHALLENGE_DOCKER_BROKER_TOKEN_FILE`.
    pub fn from_env() -> Result<Self, ClientError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| ClientError::Config(format!("{name} is not set")))
        };
        let url = var("CHALLENGE_DOCKER_BROKER_URL")?;
        let slug = var("CHALLENGE_SLUG")?;
        let file = var("CHALLENGE_DOCKER_BROKER_TOKEN_FILE")?;
        let token = std::fs::read_to_string(&file)
            .map_err(|e| ClientError::Config(format!("reading {file}: {e}")))?;
        Self::new(url, slug, SecretString::from(token.trim().to_string()))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .header("X-Base-Challenge-Slug", &self.slug)
            .bearer_auth(self.token.expose_secret())
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = builder.send().await.map_err(ClientError::Transport)?;
        let response = check(response).await?;
        response
            .json()
            .await
            .map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Submits a job (`POST /v1/jobs`); returns as soon as it is accepted.
    pub async fn submit(&self, req: &BrokerRunRequest) -> Result<JobView, ClientError> {
        self.send(self.request(reqwest::Method::POST, "/v1/jobs").json(req))
            .await
    }

    /// The job's current state (`GET /v1/jobs/{id}`).
    pub async fn status(&self, id: &str) -> Result<JobView, ClientError> {
        self.send(self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}")))
            .await
    }

    /// Waits until the job ends (long-polling, no busy loop), or `timeout`
    /// passes; returns the job as it then is.
    pub async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<JobView, ClientError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(WAIT_SLICE),
                None => WAIT_SLICE,
            };
            let view: JobView = self
                .send(
                    self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}"))
                        .query(&[("wait", slice.as_secs().max(1))]),
                )
                .await?;
            let expired = deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if view.state.is_terminal() || expired {
                return Ok(view);
            }
        }
    }

    /// The job's output: the live tail while it runs, the kept tail after.
    pub async fn logs(&self, id: &str) -> Result<JobLogs, ClientError> {
        self.send(self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}/logs")))
            .await
    }

    /// The job's output as it is produced, until the job ends.
    pub async fn follow_logs(
        &self,
        id: &str,
    ) -> Result<futures::stream::BoxStream<'static, Result<LogLine, ClientError>>, ClientError>
    {
        let response = self
            .request(reqwest::Method::GET, &format!("/v1/jobs/{id}/logs"))
            .query(&[("follow", "true")])
            .send()
            .await
            .map_err(ClientError::Transport)?;
        let response = check(response).await?;
        let bytes = response.bytes_stream();
        Ok(Box::pin(ndjson_lines(bytes)))
    }

    /// What came back from the job's writable mounts once it ended
    /// (`GET /v1/jobs/{id}/outputs`); [`output_files`] unpacks one.
    pub async fn outputs(&self, id: &str) -> Result<Vec<JobOutput>, ClientError> {
        let view: JobOutputsView = self
            .send(self.request(reqwest::Method::GET, &format!("/v1/jobs/{id}/outputs")))
            .await?;
        Ok(view.outputs)
    }

    /// Cancels the job: its task is stopped on the worker and removed.
    pub async fn cancel(&self, id: &str) -> Result<JobView, ClientError> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/jobs/{id}")))
            .await
    }

    /// The Python-compatible synchronous run (`POST /v1/docker/run`).
    pub async fn run(&self, req: &BrokerRunRequest) -> Result<BrokerRunResponse, ClientError> {
        self.send(
            self.request(reqwest::Method::POST, "/v1/docker/run")
                .json(req),
        )
        .await
    }

    /// `POST /v1/docker/cleanup`.
    pub async fn cleanup(&self, job_id: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send(
                self.request(reqwest::Method::POST, "/v1/docker/cleanup")
                    .json(&CleanupRequest {
                        job_id: job_id.to_string(),
                    }),
            )
            .await?;
        Ok(())
    }

    /// `POST /v1/docker/list`.
    pub async fn list(&self, job_id: Option<&str>) -> Result<ListResponse, ClientError> {
        self.send(
            self.request(reqwest::Method::POST, "/v1/docker/list")
                .json(&ListRequest {
                    job_id: job_id.map(str::to_string),
                }),
        )
        .await
    }
}

/// Submits a job through `client` and returns its id and state; the
/// integrator's entry point (see `examples/submit-job`).
pub async fn submit_job(
    client: &BrokerClient,
    request: &BrokerRunRequest,
) -> Result<JobView, ClientError> {
    client.submit(request).await
}

/// Turns a non-2xx answer into [`ClientError::Status`] with its `detail`.
async fn check(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("detail")
                .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string))
        })
        .unwrap_or(text);
    Err(ClientError::Status {
        status: status.as_u16(),
        detail,
    })
}

/// Splits a byte stream into newline-delimited JSON [`LogLine`]s.
fn ndjson_lines(
    bytes: impl Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
) -> impl Stream<Item = Result<LogLine, ClientError>> + Send + 'static {
    let state = (Box::pin(bytes), Vec::<u8>::new(), false);
    futures::stream::unfold(state, |(mut bytes, mut buf, mut ended)| async move {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let parsed = serde_json::from_slice::<LogLine>(&line)
                    .map_err(|e| ClientError::Decode(e.to_string()));
                return Some((parsed, (bytes, buf, ended)));
            }
            if ended {
                if buf.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
                let rest = std::mem::take(&mut buf);
                let parsed = serde_json::from_slice::<LogLine>(&rest)
                    .map_err(|e| ClientError::Decode(e.to_string()));
                return Some((parsed, (bytes, buf, ended)));
            }
            match bytes.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    ended = true;
                    return Some((Err(ClientError::Transport(e)), (bytes, buf, ended)));
                }
                None => ended = true,
            }
        }
    })
}
